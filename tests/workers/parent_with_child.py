"""A plain worker whose job runs in a child process: on SIGTERM it waits for the child to
finish, then exits. The child writes <out> when it has finished its second of work."""
import signal
import subprocess
import sys
import time

out = sys.argv[1]
child = subprocess.Popen(["sh", "-c", "sleep 1; echo finished > " + out])


def term(*_):
    child.wait()
    sys.exit(0)


signal.signal(signal.SIGTERM, term)
open(out + ".started", "w").close()
while True:
    time.sleep(0.1)
