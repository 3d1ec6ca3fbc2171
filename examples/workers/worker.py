#!/usr/bin/env python3
"""An example steward worker in Python, using only the standard library.

steward starts it with a connected Unix socket whose descriptor number is in
STEWARD_FD. Both sides send one JSON object per line. This worker handles jobs whose
payload looks like {"seconds": 2.5} (it "works" that long, reporting progress) or
{"fail": "why"} (it reports a failure); anything else is echoed back as the result.
"""
import json
import os
import select
import socket
import sys
import time

sock = socket.socket(fileno=int(os.environ["STEWARD_FD"]))
reader = sock.makefile("r", encoding="utf-8", newline="\n")
name = f"{os.environ.get('STEWARD_POOL', '?')}/{os.environ.get('STEWARD_INSTANCE', '?')}"
cancelled = set()
draining = False


def send(msg):
    sock.sendall((json.dumps(msg) + "\n").encode())


def read_nowait():
    """Handle messages that arrived while a job runs (cancel, drain)."""
    global draining
    while select.select([sock], [], [], 0)[0]:
        line = reader.readline()
        if not line:
            sys.exit(0)
        msg = json.loads(line)
        if msg["type"] == "cancel":
            cancelled.add(msg["id"])
        elif msg["type"] == "drain":
            draining = True


def work(job):
    payload = job["payload"]
    if isinstance(payload, dict) and "fail" in payload:
        send({"type": "fail", "id": job["id"], "error": str(payload["fail"]), "retry": bool(payload.get("retry", True))})
        return
    seconds = float(payload.get("seconds", 0)) if isinstance(payload, dict) else 0.0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        time.sleep(min(0.2, seconds))
        read_nowait()
        if job["id"] in cancelled:
            send({"type": "fail", "id": job["id"], "error": "cancelled", "retry": False})
            return
        elapsed = time.monotonic() - started
        done = min(1.0, elapsed / seconds)
        send({"type": "progress", "id": job["id"], "progress": done,
              "message": f"{min(elapsed, seconds):.1f} of {seconds:g} s"})
    print(f"job {job['id']} done on {name}", flush=True)
    send({"type": "done", "id": job["id"], "result": {"echo": payload, "worker": name, "pid": os.getpid()}})


send({"type": "ready"})
for line in reader:
    msg = json.loads(line)
    if msg["type"] == "job":
        work(msg)
    elif msg["type"] == "drain":
        draining = True
    elif msg["type"] == "error":
        print(f"steward says: {msg['message']}", file=sys.stderr, flush=True)
