'use strict';
// Write steward workers in Node.js: handlers for queues, with heartbeats, progress,
// cancellation and graceful drain taken care of. No dependencies.
//
//   const { Worker, Fail } = require('steward-worker');
//   const worker = new Worker();
//   worker.handle('thumbnails', async (job) => {
//     await job.progress(0.5, 'resizing');
//     if (job.payload.broken) throw new Fail('the image cannot be read', { retry: false });
//     return { ok: true };
//   });
//   worker.run();
//
// The protocol it speaks is described in docs/protocol.md of steward.

const net = require('node:net');
const http = require('node:http');

/** Longest error text sent with a failure (steward keeps 4 KiB). */
const MAX_ERROR = 4096;
/** Longest progress message sent (steward keeps 1 KiB). */
const MAX_MESSAGE = 1024;

class NotUnderSteward extends Error {
  constructor(message) {
    super(message);
    this.name = 'NotUnderSteward';
  }
}

/** Throw in a handler to fail the job with this message; `{ retry: false }` fails it at once. */
class Fail extends Error {
  constructor(message, { retry = true } = {}) {
    super(message);
    this.name = 'Fail';
    this.retry = retry;
  }
}

/** Thrown by `job.throwIfCancelled()` once steward has cancelled the job. */
class Cancelled extends Error {
  constructor(message) {
    super(message);
    this.name = 'Cancelled';
  }
}

class SubmitError extends Error {
  constructor(message) {
    super(message);
    this.name = 'SubmitError';
  }
}

class Job {
  constructor(worker, msg) {
    this._worker = worker;
    /** The job's id. */
    this.id = msg.id;
    /** The queue it came from. */
    this.queue = msg.queue || '';
    /** Which start this is (1 for the first; interruptions count too). */
    this.attempt = msg.attempt || 1;
    /** The payload, as submitted. */
    this.payload = msg.payload;
    /** When the attempt times out (RFC 3339), or null. */
    this.deadline = msg.deadline || null;
    this._abort = new AbortController();
    /** Aborted when steward cancels the job (an operator's cancel, or its timeout). */
    this.signal = this._abort.signal;
  }

  /** Whether steward cancelled the job. */
  get cancelled() {
    return this.signal.aborted;
  }

  /** Throw `Cancelled` if the job was cancelled: call it between steps. */
  throwIfCancelled() {
    if (this.cancelled) throw new Cancelled(`job ${this.id} was cancelled`);
  }

  /** Report progress: a fraction from 0 to 1 and/or a short message. */
  progress(fraction, message) {
    const msg = { type: 'progress', id: this.id };
    if (fraction !== undefined && fraction !== null) msg.progress = Math.min(1, Math.max(0, Number(fraction)));
    if (message !== undefined && message !== null) msg.message = String(message).slice(0, MAX_MESSAGE);
    return this._worker._send(msg);
  }

  /** Submit a follow-up job through steward's control socket; resolves to its id. */
  submit(queue, payload, options) {
    return submit(queue, payload, options);
  }
}

class Worker {
  /**
   * @param {{concurrency?: number, heartbeatMs?: number, exitOnDrain?: boolean}} [options]
   */
  constructor(options = {}) {
    const fd = process.env.STEWARD_FD;
    if (!fd) {
      throw new NotUnderSteward(
        'STEWARD_FD is not set: this program is a steward worker and talks to steward over the socket ' +
          'steward gives it. Run it from a pool with queues = [...] in /etc/steward/steward.toml ' +
          '(then `systemctl reload steward`), not by hand.'
      );
    }
    const n = Number(fd);
    if (!Number.isInteger(n) || n < 0) {
      throw new NotUnderSteward(`STEWARD_FD=${JSON.stringify(fd)} is not a descriptor number: this program must be started by steward`);
    }
    this._fd = n;
    this.pool = process.env.STEWARD_POOL || '';
    this.instance = Number(process.env.STEWARD_INSTANCE || 0);
    this.concurrency = options.concurrency || Number(process.env.STEWARD_CONCURRENCY || 1);
    this.heartbeatMs = options.heartbeatMs || Number(process.env.STEWARD_HEARTBEAT_MS || 20000);
    this.exitOnDrain = options.exitOnDrain !== false;
    this._handlers = new Map();
    this._default = null;
    this._jobs = new Map();
    this._draining = false;
    this._socket = null;
    this._done = null;
  }

  /** Handle `queue`'s jobs with `fn` (sync or async); `handle(fn)` handles every other queue. */
  handle(queue, fn) {
    if (typeof queue === 'function') {
      this._default = queue;
    } else {
      this._handlers.set(queue, fn);
    }
    return this;
  }

  /**
   * Say ready and run jobs until steward drains this worker or closes the socket; then
   * finish the jobs held. Resolves when done (and exits the process with 0 unless
   * `exitOnDrain: false`).
   */
  run() {
    if (this._handlers.size === 0 && !this._default) {
      throw new Error('no handlers: register one with worker.handle("QUEUE", fn) before run()');
    }
    let socket;
    try {
      socket = new net.Socket({ fd: this._fd, readable: true, writable: true });
    } catch (e) {
      throw new NotUnderSteward(`STEWARD_FD=${this._fd} is not an open socket (${e.message}): this program must be started by steward`);
    }
    this._socket = socket;
    socket.setEncoding('utf8');
    let buffered = '';
    socket.on('data', (chunk) => {
      buffered += chunk;
      let nl;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        if (line.trim()) this._message(line);
      }
    });
    socket.on('error', () => {});
    const finished = new Promise((resolve) => {
      this._done = resolve;
    });
    socket.on('end', () => this._drain());
    socket.on('close', () => this._drain());
    // The stop signal comes after a drain; a worker still holding jobs finishes them.
    this._onTerm = () => this._drain();
    process.on('SIGTERM', this._onTerm);
    this._beat = setInterval(() => {
      if (this._jobs.size > 0) this._send({ type: 'heartbeat' }).catch(() => {});
    }, Math.max(50, this.heartbeatMs));
    this._send({ type: 'ready' }).catch(() => {});
    return finished.then(() => {
      if (this.exitOnDrain) process.exit(0);
    });
  }

  _message(line) {
    let msg;
    try {
      msg = JSON.parse(line);
    } catch {
      process.stderr.write(`steward-worker: not JSON from steward: ${line.slice(0, 200)}\n`);
      return;
    }
    switch (msg.type) {
      case 'job':
        this._start(msg);
        break;
      case 'cancel': {
        const job = this._jobs.get(msg.id);
        if (job) job._abort.abort(new Cancelled(`job ${msg.id} was cancelled`));
        break;
      }
      case 'drain':
        this._drain();
        break;
      case 'error':
        process.stderr.write(`steward-worker: steward says: ${msg.message}\n`);
        break;
      default:
        break;
    }
  }

  _start(msg) {
    const job = new Job(this, msg);
    this._jobs.set(job.id, job);
    const handler = this._handlers.get(job.queue) || this._default;
    if (!handler) {
      this._finish(job, new Fail(`this worker has no handler for queue ${JSON.stringify(job.queue)}`));
      return;
    }
    // Sync and async handlers alike; a cancel settles the job even if the handler
    // ignores the signal (the handler's later answer is not sent).
    const cancelled = new Promise((_, reject) => {
      job.signal.addEventListener('abort', () => reject(job.signal.reason), { once: true });
    });
    cancelled.catch(() => {});
    Promise.race([Promise.resolve().then(() => handler(job)), cancelled]).then(
      (result) => this._finish(job, null, result),
      (err) => this._finish(job, err)
    );
  }

  _finish(job, err, result) {
    if (!this._jobs.has(job.id)) return;
    let msg;
    if (!err && !job.cancelled) {
      msg = { type: 'done', id: job.id };
      if (result !== undefined) msg.result = result;
      try {
        JSON.stringify(msg);
      } catch (e) {
        msg = { type: 'fail', id: job.id, error: `the handler's result cannot be sent as JSON: ${e.message}`, retry: false };
      }
    } else if (!err || err instanceof Cancelled || job.cancelled) {
      msg = { type: 'fail', id: job.id, error: 'cancelled', retry: false };
    } else if (err instanceof Fail) {
      msg = { type: 'fail', id: job.id, error: String(err.message).slice(0, MAX_ERROR), retry: err.retry };
    } else {
      const text = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
      process.stderr.write(`steward-worker: job ${job.id} failed: ${err && err.stack ? err.stack : text}\n`);
      msg = { type: 'fail', id: job.id, error: text.slice(0, MAX_ERROR), retry: true };
    }
    this._jobs.delete(job.id);
    this._send(msg)
      .catch(() => {})
      .then(() => {
        if (this._draining && this._jobs.size === 0) this._close();
      });
  }

  _drain() {
    this._draining = true;
    if (this._jobs.size === 0) this._close();
  }

  _close() {
    if (!this._done) return;
    const done = this._done;
    this._done = null;
    clearInterval(this._beat);
    process.removeListener('SIGTERM', this._onTerm);
    if (this._socket) this._socket.end();
    done();
  }

  _send(msg) {
    return new Promise((resolve, reject) => {
      if (!this._socket || this._socket.destroyed) {
        reject(new Error('the socket to steward is closed'));
        return;
      }
      this._socket.write(JSON.stringify(msg) + '\n', (err) => (err ? reject(err) : resolve()));
    });
  }
}

/**
 * Submit a job to steward over its control socket (STEWARD_SOCKET, which steward gives
 * its workers); resolves to the job's id. `delayMs` and `timeoutMs` are milliseconds.
 */
function submit(queue, payload, options = {}) {
  const socketPath = options.socketPath || process.env.STEWARD_SOCKET;
  if (!socketPath) {
    return Promise.reject(new SubmitError('STEWARD_SOCKET is not set: pass { socketPath }, e.g. /run/steward/steward.sock'));
  }
  const body = { queue, payload: payload === undefined ? {} : payload };
  if (options.priority !== undefined) body.priority = options.priority;
  if (options.delayMs !== undefined) body.delay_ms = options.delayMs;
  if (options.maxAttempts !== undefined) body.max_attempts = options.maxAttempts;
  if (options.timeoutMs !== undefined) body.timeout_ms = options.timeoutMs;
  if (options.key !== undefined) body.key = options.key;
  const data = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        socketPath,
        path: '/v1/jobs',
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) },
        timeout: options.requestTimeoutMs || 30000,
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (text += c));
        res.on('end', () => {
          let answer = {};
          try {
            answer = JSON.parse(text || '{}');
          } catch {
            // not JSON: said below
          }
          if (res.statusCode === 200 || res.statusCode === 201) resolve(answer.id);
          else reject(new SubmitError(answer.error || `steward answered HTTP ${res.statusCode}`));
        });
      }
    );
    req.on('timeout', () => req.destroy(new Error('no answer in time')));
    req.on('error', (e) => reject(new SubmitError(`cannot reach steward at ${socketPath}: ${e.message}`)));
    req.end(data);
  });
}

module.exports = { Worker, Job, Fail, Cancelled, NotUnderSteward, SubmitError, submit };
