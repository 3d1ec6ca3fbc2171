#!/usr/bin/env python3
"""A protocol worker for the integration tests. Each job runs in a thread of its own, so
a pool with `concurrency > 1` holds several jobs at once, as real workers do. Its
behaviour is set by each job's payload:

  append: PATH      append "<id> <attempt> <pid>" to PATH before finishing
  sleep: SECONDS    take that long (sending heartbeats every 0.05 s unless "silent")
  beat: SECONDS     the heartbeat interval while sleeping (default 0.05)
  silent: true      send nothing while sleeping (to test leases)
  fail: MESSAGE     report a failure; "retry": false makes it permanent
  fail_bytes: N     report a permanent failure whose error is N bytes long
  result_bytes: N   succeed with a result (a string) N bytes long
  exit: CODE        exit at once (a crash while holding the job)
  ignore_cancel     keep working after "cancel"
  bogus_done: ID    first send "done" for job ID (which it does not hold)
  garbage: true     first send a malformed line
  huge: true        first send a line longer than 16 MiB
  result: VALUE     the result to report
  exit_once: PATH   exit (crash) unless PATH exists; create it first
  sleep_first: S    on attempt 1 only, take S seconds (heartbeating unless "silent")
  progress: [P, …]  report these progress values (message "step N") first, at once

TEST_READY_DELAY in the environment: wait that many seconds before saying ready.
"""
import json
import os
import socket
import sys
import threading
import time

sock = socket.socket(fileno=int(os.environ["STEWARD_FD"]))
reader = sock.makefile("r", encoding="utf-8", newline="\n")
write_lock = threading.Lock()
cancelled = set()


def send(msg):
    data = (json.dumps(msg) + "\n").encode()
    with write_lock:
        sock.sendall(data)


def send_raw(data):
    with write_lock:
        sock.sendall(data)


def work(job):
    p = job["payload"] if isinstance(job["payload"], dict) else {}
    jid = job["id"]
    print(f"working on job {jid}", flush=True)
    if p.get("garbage"):
        send_raw(b"this is not json\n")
    if p.get("huge"):
        send_raw(b'{"type":"heartbeat","pad":"' + b"x" * (17 * 1024 * 1024) + b'"}\n')
    if "bogus_done" in p:
        send({"type": "done", "id": p["bogus_done"], "result": "forged"})
    if "exit_once" in p and not os.path.exists(p["exit_once"]):
        open(p["exit_once"], "w").close()
        os._exit(3)
    if "exit" in p:
        os._exit(int(p["exit"]))
    seconds = float(p.get("sleep", 0))
    if job["attempt"] == 1 and "sleep_first" in p:
        seconds = float(p["sleep_first"])
    for n, value in enumerate(p.get("progress", [])):
        send({"type": "progress", "id": jid, "progress": value, "message": f"step {n + 1}"})
    beat = float(p.get("beat", 0.05))
    end = time.monotonic() + seconds
    next_beat = time.monotonic() + beat
    while time.monotonic() < end:
        time.sleep(min(0.05, beat))
        if jid in cancelled and not p.get("ignore_cancel"):
            send({"type": "fail", "id": jid, "error": "gave up after cancel"})
            return
        if not p.get("silent") and time.monotonic() >= next_beat:
            send({"type": "heartbeat"})
            next_beat = time.monotonic() + beat
    if "append" in p:
        with open(p["append"], "a") as f:
            f.write(f"{jid} {job['attempt']} {os.getpid()}\n")
    if "fail_bytes" in p:
        send({"type": "fail", "id": jid, "error": "e" * int(p["fail_bytes"]), "retry": False})
        return
    if "fail" in p:
        send({"type": "fail", "id": jid, "error": p["fail"], "retry": p.get("retry", True)})
        return
    if "result_bytes" in p:
        send({"type": "done", "id": jid, "result": "r" * int(p["result_bytes"])})
        return
    send({"type": "done", "id": jid, "result": p.get("result", {"ok": True, "attempt": job["attempt"]})})


# A slow start: TEST_READY_DELAY seconds before saying ready.
time.sleep(float(os.environ.get("TEST_READY_DELAY", "0")))
send({"type": "ready"})
for line in reader:
    msg = json.loads(line)
    if msg["type"] == "job":
        threading.Thread(target=work, args=(msg,), daemon=True).start()
    elif msg["type"] == "cancel":
        cancelled.add(msg["id"])
    elif msg["type"] == "error":
        print("steward error: " + msg["message"], file=sys.stderr, flush=True)
# steward closed the socket: leave, abandoning whatever is still running.
os._exit(0)
