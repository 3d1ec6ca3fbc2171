"""Write steward workers in Python: handlers for queues, with heartbeats, progress,
cancellation and graceful drain taken care of.

    from steward_worker import Worker, Fail

    worker = Worker()

    @worker.job("thumbnails")
    def thumbnail(job):
        job.progress(0.5, "resizing")
        if job.payload.get("broken"):
            raise Fail("the image cannot be read", retry=False)
        return {"ok": True}

    worker.run()

Standard library only, Python 3.9 or later. The protocol it speaks is described in
docs/protocol.md of steward.
"""

from __future__ import annotations

import asyncio
import http.client
import inspect
import json
import os
import signal
import socket
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, Dict, Optional, Set, Union

__all__ = [
    "Worker",
    "Job",
    "Fail",
    "Cancelled",
    "NotUnderSteward",
    "SubmitError",
    "submit",
]
__version__ = "0.1.0"

#: Longest error text sent with a failure (steward keeps 4 KiB).
MAX_ERROR = 4096
#: Longest progress message sent (steward keeps 1 KiB).
MAX_MESSAGE = 1024

Handler = Callable[["Job"], Union[Any, Awaitable[Any]]]


class NotUnderSteward(RuntimeError):
    """The program was started outside a steward pool (no STEWARD_FD)."""


class Fail(Exception):
    """Raise in a handler to fail the job with this message.

    ``retry=False`` fails it at once; by default it may run again after the queue's
    retry_backoff, until max_attempts.
    """

    def __init__(self, message: str, retry: bool = True):
        super().__init__(message)
        self.retry = retry


class Cancelled(Exception):
    """Raised by :meth:`Job.check_cancelled` once steward has cancelled the job."""


class SubmitError(RuntimeError):
    """steward refused a submit, or could not be reached."""


class Job:
    """One job handed to a handler."""

    def __init__(self, worker: "Worker", msg: Dict[str, Any]):
        self._worker = worker
        #: The job's id.
        self.id: int = msg["id"]
        #: The queue it came from.
        self.queue: str = msg.get("queue", "")
        #: Which start this is (1 for the first; interruptions count too).
        self.attempt: int = msg.get("attempt", 1)
        #: The payload, as submitted.
        self.payload: Any = msg.get("payload")
        #: When the attempt times out (RFC 3339), or None.
        self.deadline: Optional[str] = msg.get("deadline")
        self._cancelled = threading.Event()
        self._task: Optional[asyncio.Task] = None

    @property
    def cancelled(self) -> bool:
        """Whether steward cancelled the job (a cancel by an operator, or its timeout)."""
        return self._cancelled.is_set()

    def check_cancelled(self) -> None:
        """Raise :class:`Cancelled` if the job was cancelled: call it between steps."""
        if self._cancelled.is_set():
            raise Cancelled(f"job {self.id} was cancelled")

    def wait_cancelled(self, timeout: Optional[float] = None) -> bool:
        """Sleep up to ``timeout`` seconds, waking early on a cancel; True if cancelled."""
        return self._cancelled.wait(timeout)

    def progress(self, fraction: Optional[float] = None, message: Optional[str] = None) -> None:
        """Report progress: ``fraction`` from 0 to 1 and/or a short message."""
        msg: Dict[str, Any] = {"type": "progress", "id": self.id}
        if fraction is not None:
            msg["progress"] = min(1.0, max(0.0, float(fraction)))
        if message is not None:
            msg["message"] = str(message)[:MAX_MESSAGE]
        self._worker._send(msg)

    def submit(self, queue: str, payload: Any = None, **options: Any) -> int:
        """Submit a follow-up job through steward's control socket; returns its id."""
        return submit(queue, payload, **options)

    def __repr__(self) -> str:
        return f"Job(id={self.id}, queue={self.queue!r}, attempt={self.attempt})"


class Worker:
    """The worker: register handlers with :meth:`job`, then call :meth:`run`.

    ``concurrency`` defaults to the pool's (``STEWARD_CONCURRENCY``): sync handlers run
    on that many threads, async ones on one event loop.
    """

    def __init__(self, concurrency: Optional[int] = None, heartbeat: Optional[float] = None):
        fd = os.environ.get("STEWARD_FD")
        if not fd:
            raise NotUnderSteward(
                "STEWARD_FD is not set: this program is a steward worker and talks to steward "
                "over the socket steward gives it. Run it from a pool with queues = [...] in "
                "/etc/steward/steward.toml (then `systemctl reload steward`), not by hand."
            )
        try:
            self._sock = socket.socket(fileno=int(fd))
        except (ValueError, OSError) as e:
            raise NotUnderSteward(
                f"STEWARD_FD={fd!r} is not an open socket ({e}): this program must be started by steward"
            ) from e
        self.pool = os.environ.get("STEWARD_POOL", "")
        self.instance = int(os.environ.get("STEWARD_INSTANCE", "0") or 0)
        self.concurrency = concurrency or int(os.environ.get("STEWARD_CONCURRENCY", "1") or 1)
        every_ms = float(os.environ.get("STEWARD_HEARTBEAT_MS", "20000") or 20000)
        self.heartbeat = heartbeat if heartbeat is not None else every_ms / 1000.0
        self._handlers: Dict[str, Handler] = {}
        self._default: Optional[Handler] = None
        self._send_lock = threading.Lock()
        self._jobs: Dict[int, Job] = {}
        self._jobs_lock = threading.Lock()
        self._idle = threading.Condition(self._jobs_lock)
        self._draining = threading.Event()
        self._closed = threading.Event()
        self._threads: Optional[ThreadPoolExecutor] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    # ------------------------------------------------------------------ handlers

    def job(self, queue: Optional[str] = None) -> Callable[[Handler], Handler]:
        """Decorator: ``@worker.job("thumbnails")`` handles that queue's jobs;
        ``@worker.job()`` handles every queue without a handler of its own."""

        def register(fn: Handler) -> Handler:
            self.handle(queue, fn)
            return fn

        return register

    def handle(self, queue: Optional[str], fn: Handler) -> None:
        """Register ``fn`` for ``queue`` (None: the default handler)."""
        if queue is None:
            self._default = fn
        else:
            self._handlers[queue] = fn

    # ------------------------------------------------------------------ running

    def run(self) -> None:
        """Say ready, run jobs until steward drains this worker or closes the socket,
        finish the jobs held, and return."""
        if not self._handlers and self._default is None:
            raise RuntimeError("no handlers: register one with @worker.job(\"QUEUE\") before run()")
        self._threads = ThreadPoolExecutor(max_workers=max(1, self.concurrency), thread_name_prefix="steward-job")
        if any(inspect.iscoroutinefunction(h) for h in self._all_handlers()):
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, name="steward-async", daemon=True).start()
        if threading.current_thread() is threading.main_thread():
            # The stop signal comes after a drain; a worker still holding jobs finishes them.
            signal.signal(signal.SIGTERM, lambda *_: self._drain())
        beat = threading.Thread(target=self._heartbeats, name="steward-heartbeat", daemon=True)
        beat.start()
        self._send({"type": "ready"})
        try:
            self._read()
        finally:
            with self._idle:
                while self._jobs:
                    self._idle.wait(0.5)
            self._closed.set()
            self._threads.shutdown(wait=True)
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
            try:
                self._sock.close()
            except OSError:
                pass

    def _all_handlers(self):
        yield from self._handlers.values()
        if self._default is not None:
            yield self._default

    def _read(self) -> None:
        reader = self._sock.makefile("r", encoding="utf-8", newline="\n")
        while True:
            if self._draining.is_set():
                with self._jobs_lock:
                    if not self._jobs:
                        return
            try:
                line = reader.readline()
            except (OSError, ValueError):
                return
            if not line:
                return
            try:
                msg = json.loads(line)
            except ValueError:
                print(f"steward_worker: not JSON from steward: {line[:200]!r}", file=sys.stderr, flush=True)
                continue
            kind = msg.get("type")
            if kind == "job":
                self._start(msg)
            elif kind == "cancel":
                self._cancel(msg.get("id"))
            elif kind == "drain":
                self._draining.set()
                with self._jobs_lock:
                    if not self._jobs:
                        return
            elif kind == "error":
                print(f"steward_worker: steward says: {msg.get('message')}", file=sys.stderr, flush=True)

    def _drain(self) -> None:
        """Take no more jobs; once none is held, let run() return."""
        self._draining.set()
        with self._jobs_lock:
            idle = not self._jobs
        if idle:
            try:
                self._sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass

    def _start(self, msg: Dict[str, Any]) -> None:
        job = Job(self, msg)
        handler = self._handlers.get(job.queue, self._default)
        with self._jobs_lock:
            self._jobs[job.id] = job
        if handler is None:
            self._finish(job, Fail(f"this worker has no handler for queue {job.queue!r}", retry=True))
            return
        if inspect.iscoroutinefunction(handler) and self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._run_async(handler, job), self._loop)
        else:
            assert self._threads is not None
            self._threads.submit(self._run_sync, handler, job)

    def _run_sync(self, handler: Handler, job: Job) -> None:
        try:
            result = handler(job)
        except BaseException as e:  # noqa: BLE001 - every failure is reported
            self._finish(job, e)
        else:
            self._finish(job, None, result)

    async def _run_async(self, handler: Handler, job: Job) -> None:
        job._task = asyncio.current_task()
        if job.cancelled:
            self._finish(job, Cancelled(f"job {job.id} was cancelled"))
            return
        try:
            result = await handler(job)  # type: ignore[misc]
        except asyncio.CancelledError:
            self._finish(job, Cancelled(f"job {job.id} was cancelled"))
        except BaseException as e:  # noqa: BLE001
            self._finish(job, e)
        else:
            self._finish(job, None, result)

    def _cancel(self, job_id: Any) -> None:
        with self._jobs_lock:
            job = self._jobs.get(job_id)
        if job is None:
            return
        job._cancelled.set()
        if job._task is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(job._task.cancel)

    def _finish(self, job: Job, error: Optional[BaseException], result: Any = None) -> None:
        if error is None and not job.cancelled:
            msg: Dict[str, Any] = {"type": "done", "id": job.id}
            if result is not None:
                msg["result"] = result
        else:
            if error is None or isinstance(error, Cancelled):
                text, retry = "cancelled", False
            elif isinstance(error, Fail):
                text, retry = str(error), error.retry
            else:
                text = "".join(traceback.format_exception_only(type(error), error)).strip()
                retry = True
                print(f"steward_worker: job {job.id} failed:", file=sys.stderr, flush=True)
                traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
            msg = {"type": "fail", "id": job.id, "error": text[:MAX_ERROR], "retry": retry}
        try:
            try:
                self._send(msg)
            except TypeError as e:
                # A result that is not JSON: the job fails, saying so.
                self._send({"type": "fail", "id": job.id, "error": f"the handler's result cannot be sent as JSON: {e}", "retry": False})
        except OSError:
            # steward is gone: it takes the job back when it returns.
            pass
        finally:
            with self._idle:
                self._jobs.pop(job.id, None)
                self._idle.notify_all()
        if self._draining.is_set():
            with self._jobs_lock:
                if not self._jobs:
                    # Wake the reader so that run() returns.
                    try:
                        self._sock.shutdown(socket.SHUT_RD)
                    except OSError:
                        pass

    def _heartbeats(self) -> None:
        while not self._closed.wait(self.heartbeat):
            with self._jobs_lock:
                busy = bool(self._jobs)
            if busy:
                try:
                    self._send({"type": "heartbeat"})
                except OSError:
                    return

    def _send(self, msg: Dict[str, Any]) -> None:
        data = (json.dumps(msg, separators=(",", ":")) + "\n").encode()
        with self._send_lock:
            self._sock.sendall(data)


# ---------------------------------------------------------------------- submitting


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def submit(
    queue: str,
    payload: Any = None,
    *,
    priority: Optional[int] = None,
    delay: Optional[float] = None,
    max_attempts: Optional[int] = None,
    timeout: Optional[float] = None,
    key: Optional[str] = None,
    socket_path: Optional[str] = None,
    request_timeout: float = 30.0,
) -> int:
    """Submit a job to steward over its control socket (``STEWARD_SOCKET``, which steward
    gives its workers); returns the job's id. ``delay`` and ``timeout`` are seconds."""
    path = socket_path or os.environ.get("STEWARD_SOCKET")
    if not path:
        raise SubmitError(
            "STEWARD_SOCKET is not set: pass socket_path=..., e.g. /run/steward/steward.sock"
        )
    body: Dict[str, Any] = {"queue": queue, "payload": {} if payload is None else payload}
    if priority is not None:
        body["priority"] = priority
    if delay is not None:
        body["delay_ms"] = int(delay * 1000)
    if max_attempts is not None:
        body["max_attempts"] = max_attempts
    if timeout is not None:
        body["timeout_ms"] = int(timeout * 1000)
    if key is not None:
        body["key"] = key
    conn = _UnixHTTPConnection(path, request_timeout)
    try:
        conn.request("POST", "/v1/jobs", body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
    except OSError as e:
        raise SubmitError(f"cannot reach steward at {path}: {e}") from e
    finally:
        conn.close()
    try:
        answer = json.loads(data or b"{}")
    except ValueError:
        answer = {}
    if resp.status not in (200, 201):
        raise SubmitError(answer.get("error") or f"steward answered HTTP {resp.status}")
    return int(answer["id"])
