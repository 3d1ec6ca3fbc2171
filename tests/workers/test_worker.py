#!/usr/bin/env python3
"""A protocol worker for the integration tests. Its behaviour is set by each job's payload:

  append: PATH      append "<id> <attempt> <pid>" to PATH before finishing
  sleep: SECONDS    take that long (sending heartbeats every 0.2 s unless "silent")
  silent: true      send nothing while sleeping (to test leases)
  fail: MESSAGE     report a failure; "retry": false makes it permanent
  exit: CODE        exit at once (a crash while holding the job)
  ignore_cancel     keep working after "cancel"
  bogus_done: ID    first send "done" for job ID (which it does not hold)
  garbage: true     first send a malformed line
  huge: true        first send a line longer than 16 MiB
  result: VALUE     the result to report
  exit_once: PATH   exit (crash) unless PATH exists; create it first
  sleep_first: S    on attempt 1 only, take S seconds (heartbeating unless "silent")
"""
import json
import os
import select
import socket
import sys
import time

sock = socket.socket(fileno=int(os.environ["STEWARD_FD"]))
reader = sock.makefile("r", encoding="utf-8", newline="\n")
cancelled = set()
errors = []


def send(msg):
    sock.sendall((json.dumps(msg) + "\n").encode())


def poll():
    while select.select([sock], [], [], 0)[0]:
        line = reader.readline()
        if not line:
            sys.exit(0)
        msg = json.loads(line)
        if msg["type"] == "cancel":
            cancelled.add(msg["id"])
        elif msg["type"] == "error":
            errors.append(msg["message"])
            print("steward error: " + msg["message"], file=sys.stderr, flush=True)


def work(job):
    p = job["payload"] if isinstance(job["payload"], dict) else {}
    jid = job["id"]
    print(f"working on job {jid}", flush=True)
    if p.get("garbage"):
        sock.sendall(b"this is not json\n")
    if p.get("huge"):
        sock.sendall(b'{"type":"heartbeat","pad":"' + b"x" * (17 * 1024 * 1024) + b'"}\n')
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
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)
        poll()
        if jid in cancelled and not p.get("ignore_cancel"):
            send({"type": "fail", "id": jid, "error": "gave up after cancel"})
            return
        if not p.get("silent"):
            send({"type": "heartbeat"})
    if "append" in p:
        with open(p["append"], "a") as f:
            f.write(f"{jid} {job['attempt']} {os.getpid()}\n")
    if "fail" in p:
        send({"type": "fail", "id": jid, "error": p["fail"], "retry": p.get("retry", True)})
        return
    send({"type": "done", "id": jid, "result": p.get("result", {"ok": True, "attempt": job["attempt"]})})


send({"type": "ready"})
for line in reader:
    msg = json.loads(line)
    if msg["type"] == "job":
        work(msg)
    elif msg["type"] == "error":
        print("steward error: " + msg["message"], file=sys.stderr, flush=True)
