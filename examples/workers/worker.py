#!/usr/bin/env python3
"""An example steward worker in Python, written with the steward_worker library.

Jobs whose payload looks like {"seconds": 2.5} "work" that long, reporting progress;
{"fail": "why"} fails (add "retry": false to fail at once); anything else is echoed
back as the result. Install the library with `pip install ./clients/python` (or
`pip install /usr/share/steward/clients/python` where the .deb is installed); without
that, this example finds it in a checkout or in /usr/share/steward/clients/python.
"""
import os
import sys
import time

try:
    import steward_worker
except ImportError:  # not installed: a checkout of steward, or the .deb's copy
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [os.path.join(here, "..", "..", "clients", "python"), "/usr/share/steward/clients/python"]
    import steward_worker

from steward_worker import Fail, Worker

worker = Worker()
name = f"{worker.pool}/{worker.instance}"


@worker.job()
def work(job):
    payload = job.payload
    if isinstance(payload, dict) and "fail" in payload:
        raise Fail(str(payload["fail"]), retry=bool(payload.get("retry", True)))
    seconds = float(payload.get("seconds", 0)) if isinstance(payload, dict) else 0.0
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        if job.wait_cancelled(min(0.2, seconds - elapsed)):
            job.check_cancelled()
        elapsed = min(time.monotonic() - started, seconds)
        job.progress(elapsed / seconds, f"{elapsed:.1f} of {seconds:g} s")
    print(f"job {job.id} done on {name}", flush=True)
    return {"echo": payload, "worker": name, "pid": os.getpid()}


worker.run()
