#!/usr/bin/env python3
"""A protocol worker that floods steward, for the hostile-load tests. Environment:

  FLOOD        garbage (invalid lines), heartbeat (valid heartbeats), heartbeat-yes
               (valid heartbeats written by `yes`, far faster than steward can parse them)
  FLOOD_READ   1: read (and discard) what steward sends; else never read the socket
  FLOOD_FOR    seconds of flooding (then it sits idle)
"""
import os
import socket
import subprocess
import threading
import time

sock = socket.socket(fileno=int(os.environ["STEWARD_FD"]))
sock.sendall(b'{"type":"ready"}\n')
if os.environ.get("FLOOD_READ") == "1":
    def drain():
        while sock.recv(1 << 16):
            pass
    threading.Thread(target=drain, daemon=True).start()
if os.environ["FLOOD"] == "heartbeat-yes":
    subprocess.run(["timeout", os.environ.get("FLOOD_FOR", "10"), "yes", '{"type":"heartbeat"}'],
                   stdout=sock.fileno())
    time.sleep(100000)
line = b"this is not a protocol message\n" if os.environ["FLOOD"] == "garbage" else b'{"type":"heartbeat"}\n'
chunk = line * (65536 // len(line))
end = time.monotonic() + float(os.environ.get("FLOOD_FOR", "10"))
while time.monotonic() < end:
    sock.sendall(chunk)
time.sleep(100000)
