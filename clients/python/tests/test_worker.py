"""Unit tests of steward_worker against a fake steward on a socket pair.

Run from clients/python: python3 -m unittest
"""

import asyncio
import json
import os
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import steward_worker  # noqa: E402
from steward_worker import Fail, NotUnderSteward, Worker  # noqa: E402


class FakeSteward:
    """The steward end of a worker's socket."""

    def __init__(self, env=None):
        self.ours, theirs = socket.socketpair()
        # The worker owns its end from here on (as it would, inherited from steward).
        os.environ["STEWARD_FD"] = str(theirs.detach())
        for k, v in (env or {}).items():
            os.environ[k] = v
        self.reader = self.ours.makefile("r")
        self.ours.settimeout(10)

    def send(self, msg):
        self.ours.sendall((json.dumps(msg) + "\n").encode())

    def recv(self):
        line = self.reader.readline()
        if not line:
            raise EOFError("the worker closed the socket")
        return json.loads(line)

    def recv_until(self, kind, job_id=None):
        seen = []
        while True:
            m = self.recv()
            seen.append(m)
            if m["type"] == kind and (job_id is None or m.get("id") == job_id):
                return m, seen

    def job(self, job_id, queue="q", payload=None):
        self.send({"type": "job", "id": job_id, "queue": queue, "attempt": 1, "payload": payload or {}, "deadline": None})

    def close(self):
        self.reader.close()
        self.ours.close()


def start(worker):
    t = threading.Thread(target=worker.run, daemon=True)
    t.start()
    return t


class WorkerTests(unittest.TestCase):
    def tearDown(self):
        for k in ["STEWARD_FD", "STEWARD_CONCURRENCY", "STEWARD_HEARTBEAT_MS"]:
            os.environ.pop(k, None)

    def test_outside_steward_it_says_what_to_do(self):
        os.environ.pop("STEWARD_FD", None)
        with self.assertRaises(NotUnderSteward) as e:
            Worker()
        self.assertIn("steward worker", str(e.exception))
        self.assertIn("queues", str(e.exception))
        os.environ["STEWARD_FD"] = "not-a-number"
        with self.assertRaises(NotUnderSteward):
            Worker()

    def test_ready_then_done_with_the_result(self):
        s = FakeSteward()
        w = Worker()

        @w.job("q")
        def handle(job):
            return {"doubled": job.payload["n"] * 2, "attempt": job.attempt}

        t = start(w)
        self.assertEqual(s.recv(), {"type": "ready"})
        s.job(7, payload={"n": 21})
        self.assertEqual(s.recv(), {"type": "done", "id": 7, "result": {"doubled": 42, "attempt": 1}})
        s.send({"type": "drain"})
        t.join(5)
        self.assertFalse(t.is_alive(), "run() did not return after drain")

    def test_exceptions_fail_and_fail_can_say_no_retry(self):
        s = FakeSteward()
        w = Worker()

        @w.job("q")
        def handle(job):
            if job.payload.get("permanent"):
                raise Fail("bad input", retry=False)
            raise ValueError("boom")

        start(w)
        s.recv()
        s.job(1)
        m = s.recv()
        self.assertEqual((m["type"], m["id"], m["retry"]), ("fail", 1, True))
        self.assertIn("ValueError: boom", m["error"])
        s.job(2, payload={"permanent": True})
        self.assertEqual(s.recv(), {"type": "fail", "id": 2, "error": "bad input", "retry": False})
        s.close()

    def test_progress_and_heartbeats_while_a_handler_runs(self):
        s = FakeSteward({"STEWARD_HEARTBEAT_MS": "100"})
        w = Worker()
        release = threading.Event()

        @w.job("q")
        def handle(job):
            job.progress(0.5, "halfway")
            release.wait(5)
            return None

        start(w)
        s.recv()
        s.job(3)
        self.assertEqual(s.recv(), {"type": "progress", "id": 3, "progress": 0.5, "message": "halfway"})
        beats = 0
        while beats < 3:
            m = s.recv()
            self.assertEqual(m["type"], "heartbeat")
            beats += 1
        release.set()
        m, _ = s.recv_until("done", 3)
        self.assertEqual(m, {"type": "done", "id": 3})
        s.close()

    def test_no_heartbeats_while_idle(self):
        s = FakeSteward({"STEWARD_HEARTBEAT_MS": "50"})
        w = Worker()
        w.handle("q", lambda job: None)
        start(w)
        s.recv()
        s.ours.settimeout(0.4)
        with self.assertRaises(socket.timeout):
            s.recv()
        s.close()

    def test_concurrency_runs_jobs_at_once(self):
        s = FakeSteward({"STEWARD_CONCURRENCY": "3"})
        w = Worker()
        self.assertEqual(w.concurrency, 3)
        barrier = threading.Barrier(3, timeout=5)

        @w.job("q")
        def handle(job):
            barrier.wait()
            return job.id

        start(w)
        s.recv()
        for i in (1, 2, 3):
            s.job(i)
        done = {s.recv()["id"] for _ in range(3)}
        self.assertEqual(done, {1, 2, 3})
        s.close()

    def test_cancel_reaches_sync_and_async_handlers(self):
        s = FakeSteward({"STEWARD_CONCURRENCY": "2"})
        w = Worker()
        seen = []

        @w.job("sync")
        def slow(job):
            cancelled = job.wait_cancelled(5)
            seen.append(("sync", cancelled))
            job.check_cancelled()
            return "not reached"

        @w.job("async")
        async def slow_async(job):
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                seen.append(("async", True))
                raise

        start(w)
        s.recv()
        s.job(10, queue="sync")
        s.job(11, queue="async")
        time.sleep(0.2)
        s.send({"type": "cancel", "id": 10})
        s.send({"type": "cancel", "id": 11})
        answers = {}
        while len(answers) < 2:
            m = s.recv()
            if m["type"] == "fail":
                answers[m["id"]] = m
        for i in (10, 11):
            self.assertEqual(answers[i]["error"], "cancelled")
            self.assertFalse(answers[i]["retry"])
        self.assertIn(("sync", True), seen)
        self.assertIn(("async", True), seen)
        s.close()

    def test_async_handler_result(self):
        s = FakeSteward()
        w = Worker()

        @w.job()
        async def anything(job):
            await asyncio.sleep(0.01)
            return {"queue": job.queue}

        start(w)
        s.recv()
        s.job(5, queue="other")
        self.assertEqual(s.recv(), {"type": "done", "id": 5, "result": {"queue": "other"}})
        s.close()

    def test_drain_finishes_the_held_job_first(self):
        s = FakeSteward()
        w = Worker()

        @w.job("q")
        def handle(job):
            time.sleep(0.3)
            return "finished"

        t = start(w)
        s.recv()
        s.job(8)
        time.sleep(0.05)
        s.send({"type": "drain"})
        self.assertEqual(s.recv(), {"type": "done", "id": 8, "result": "finished"})
        t.join(5)
        self.assertFalse(t.is_alive())

    def test_a_queue_without_handler_fails_the_job_and_a_bad_result_too(self):
        s = FakeSteward()
        w = Worker()
        w.handle("q", lambda job: object())
        start(w)
        s.recv()
        s.job(1, queue="elsewhere")
        m = s.recv()
        self.assertEqual(m["type"], "fail")
        self.assertIn("no handler for queue 'elsewhere'", m["error"])
        s.job(2)
        m = s.recv()
        self.assertEqual((m["type"], m["retry"]), ("fail", False))
        self.assertIn("cannot be sent as JSON", m["error"])
        s.close()

    def test_steward_going_away_mid_job_ends_run(self):
        s = FakeSteward()
        w = Worker()

        @w.job("q")
        def handle(job):
            time.sleep(0.3)
            return "nobody to tell"

        t = start(w)
        s.recv()
        s.job(1)
        time.sleep(0.05)
        s.close()
        t.join(5)
        self.assertFalse(t.is_alive(), "run() hung after steward closed the socket")

    def test_run_without_handlers_is_refused(self):
        FakeSteward()
        with self.assertRaises(RuntimeError):
            Worker().run()


class SubmitTests(unittest.TestCase):
    def test_submit_posts_to_the_control_socket(self):
        import tempfile

        path = os.path.join(tempfile.mkdtemp(), "s.sock")
        server = socket.socket(socket.AF_UNIX)
        server.bind(path)
        server.listen(1)
        got = {}

        def serve():
            c, _ = server.accept()
            data = b""
            while b"\r\n\r\n" not in data:
                data += c.recv(4096)
            head, body = data.split(b"\r\n\r\n", 1)
            length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1])
            while len(body) < length:
                body += c.recv(4096)
            got["head"] = head.decode()
            got["body"] = json.loads(body)
            answer = b'{"id": 42, "existing": false}'
            c.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
            c.close()

        threading.Thread(target=serve, daemon=True).start()
        self.addCleanup(server.close)
        job_id = steward_worker.submit("emails", {"to": "a@b"}, delay=1.5, key="k", socket_path=path)
        self.assertEqual(job_id, 42)
        self.assertTrue(got["head"].startswith("POST /v1/jobs "))
        self.assertEqual(got["body"], {"queue": "emails", "payload": {"to": "a@b"}, "delay_ms": 1500, "key": "k"})

    def test_submit_without_a_socket_says_so(self):
        os.environ.pop("STEWARD_SOCKET", None)
        with self.assertRaises(steward_worker.SubmitError) as e:
            steward_worker.submit("q")
        self.assertIn("STEWARD_SOCKET", str(e.exception))
        with self.assertRaises(steward_worker.SubmitError) as e:
            steward_worker.submit("q", socket_path="/nonexistent/s.sock")
        self.assertIn("cannot reach steward", str(e.exception))


if __name__ == "__main__":
    unittest.main()
