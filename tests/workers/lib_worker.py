#!/usr/bin/env python3
"""A worker written with steward_worker (clients/python), for the integration tests.

Payload: {"quiet": S} waits S seconds sending nothing itself (the library's heartbeats
keep the lease); {"steps": N, "step": S} reports progress N times, S seconds apart;
{"fail": "why", "retry": false} fails; {"raise": "text"} raises. Cancels are honoured.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "python"))

from steward_worker import Fail, Worker  # noqa: E402

worker = Worker()


@worker.job()
def handle(job):
    p = job.payload or {}
    if "quiet" in p:
        if job.wait_cancelled(float(p["quiet"])):
            job.check_cancelled()
    steps = int(p.get("steps", 0))
    for i in range(steps):
        job.progress((i + 1) / steps, f"step {i + 1} of {steps}")
        if job.wait_cancelled(float(p.get("step", 0.5))):
            job.check_cancelled()
    if "fail" in p:
        raise Fail(p["fail"], retry=bool(p.get("retry", True)))
    if "raise" in p:
        raise RuntimeError(p["raise"])
    return {"pid": os.getpid(), "attempt": job.attempt}


worker.run()
