"""A stand-in for a service that already speaks sd_notify: it sends its own datagrams
to $NOTIFY_SOCKET, as Python's sdnotify or gunicorn do.

It sends STATUS=starting (and EXTEND_TIMEOUT_USEC=$EXTEND_USEC if set), waits
$READY_AFTER seconds (default 0), sends READY=1 and STATUS=serving, then pings
WATCHDOG=1 every third of $WATCHDOG_USEC. Files in <dir> (argv[1]) steer instance n:
  hang-n     stop pinging (the event loop is stuck; the process lives on)
  trigger-n  send WATCHDOG=trigger
  stop-n     send STOPPING=1 and exit with code 3
With FORGE=1, a process outside its process group sends READY=1 and STATUS=forged
first. With CHILD_READY=1, READY=1 comes from a child in its process group.
"""
import os
import signal
import socket
import sys
import time

state_dir = sys.argv[1]
instance = os.environ["STEWARD_INSTANCE"]
address = os.environ["NOTIFY_SOCKET"]
if address.startswith("@"):
    address = "\0" + address[1:]


def notify(text):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.connect(address)
        s.sendall(text.encode())
    finally:
        s.close()


def flag(name):
    return os.path.exists(os.path.join(state_dir, name + "-" + instance))


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print(f"NOTIFY_SOCKET={os.environ['NOTIFY_SOCKET']}", flush=True)
print(f"WATCHDOG_USEC={os.environ.get('WATCHDOG_USEC', '')}", flush=True)

notify("STATUS=starting")
if os.environ.get("EXTEND_USEC"):
    notify("EXTEND_TIMEOUT_USEC=" + os.environ["EXTEND_USEC"])

if os.environ.get("FORGE") == "1":
    if os.fork() == 0:
        os.setsid()
        notify("READY=1\nSTATUS=forged")
        os._exit(0)
    os.wait()

time.sleep(float(os.environ.get("READY_AFTER", "0")))

if os.environ.get("CHILD_READY") == "1":
    if os.fork() == 0:
        notify("READY=1")
        # A sender that exits at once may be gone before steward reads its datagram,
        # and a sender steward cannot see is not heard (as under systemd).
        time.sleep(1)
        os._exit(0)
    os.wait()
else:
    notify("READY=1")
notify("STATUS=serving")

usec = int(os.environ.get("WATCHDOG_USEC") or 0)
period = usec / 3e6 if usec else 0.2
while True:
    if flag("stop"):
        notify("STOPPING=1")
        sys.exit(3)
    if flag("trigger"):
        notify("WATCHDOG=trigger")
        time.sleep(60)
    if usec and not flag("hang"):
        notify("WATCHDOG=1")
    time.sleep(period)
