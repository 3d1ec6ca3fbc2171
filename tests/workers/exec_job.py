#!/usr/bin/env python3
"""A job program for exec-pool tests: reads the payload (JSON) on stdin and acts on it.

  print: [LINES]      print these lines on stdout (the last one may be the result)
  stderr: TEXT        print this on stderr
  exit: CODE          exit with this code (default 0)
  signal: N           kill itself with signal N
  sleep: SECONDS      sleep first
  grandchild: PATH    start a grandchild that ignores SIGTERM; write its pid to PATH
  pidfile: PATH       write its own pid to PATH
  append: PATH        append STEWARD_JOB_ID and the payload's "n" to PATH
"""
import json
import os
import signal
import subprocess
import sys
import time

payload = json.loads(sys.stdin.read() or "null")
p = payload if isinstance(payload, dict) else {}
if "pidfile" in p:
    with open(p["pidfile"], "w") as f:
        f.write(str(os.getpid()))
if "grandchild" in p:
    child = subprocess.Popen(["sh", "-c", "trap '' TERM; exec sleep 1000"])
    with open(p["grandchild"], "w") as f:
        f.write(str(child.pid))
for line in p.get("print", []):
    print(line, flush=True)
if "stderr" in p:
    print(p["stderr"], file=sys.stderr, flush=True)
time.sleep(float(p.get("sleep", 0)))
if "append" in p:
    with open(p["append"], "a") as f:
        f.write(f"{os.environ['STEWARD_JOB_ID']} {p.get('n')} {os.environ['STEWARD_ATTEMPT']} {os.environ['STEWARD_QUEUE']}\n")
if "signal" in p:
    os.kill(os.getpid(), int(p["signal"]))
    time.sleep(5)
sys.exit(int(p.get("exit", 0)))
