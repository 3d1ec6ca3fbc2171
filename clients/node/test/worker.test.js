'use strict';
// Unit tests of steward-worker against a fake steward. Run: node --test test/
const test = require('node:test');
const assert = require('node:assert');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const fs = require('node:fs');
const { spawn, spawnSync } = require('node:child_process');
const steward = require('..');

const FIXTURE = path.join(__dirname, '..', 'fixtures', 'worker.js');

/** Start the fixture worker with a socket to a fake steward as fd 3. */
async function start(env = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sw-'));
  const sockPath = path.join(dir, 's.sock');
  const server = net.createServer();
  await new Promise((r) => server.listen(sockPath, r));
  const accepted = new Promise((r) => server.once('connection', r));
  const client = net.connect(sockPath);
  await new Promise((r) => client.once('connect', r));
  const ours = await accepted;
  const child = spawn(process.execPath, [FIXTURE], {
    stdio: ['ignore', 'inherit', 'pipe', client],
    env: { ...process.env, STEWARD_FD: '3', ...env },
  });
  let stderr = '';
  child.stderr.on('data', (c) => (stderr += c));
  client.destroy();
  server.close();
  const lines = [];
  const waiters = [];
  let buf = '';
  ours.setEncoding('utf8');
  ours.on('data', (c) => {
    buf += c;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const m = JSON.parse(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
      const w = waiters.shift();
      if (w) w(m);
      else lines.push(m);
    }
  });
  const exited = new Promise((r) => child.once('exit', (code) => r(code)));
  return {
    send: (m) => ours.write(JSON.stringify(m) + '\n'),
    job: (id, queue, payload = {}) =>
      ours.write(JSON.stringify({ type: 'job', id, queue, attempt: 1, payload, deadline: null }) + '\n'),
    next: () =>
      lines.length
        ? Promise.resolve(lines.shift())
        : new Promise((resolve, reject) => {
            const t = setTimeout(() => reject(new Error('no message within 5 s')), 5000);
            waiters.push((m) => {
              clearTimeout(t);
              resolve(m);
            });
          }),
    async until(type, id) {
      for (;;) {
        const m = await this.next();
        if (m.type === type && (id === undefined || m.id === id)) return m;
      }
    },
    /** Messages received and not taken yet. */
    pending: () => lines.length,
    stderr: () => stderr,
    exited,
    stop() {
      ours.destroy();
      child.kill('SIGKILL');
    },
  };
}

test('outside steward it says what to do', () => {
  const r = spawnSync(process.execPath, [FIXTURE], { env: { ...process.env, STEWARD_FD: '' }, encoding: 'utf8' });
  assert.notStrictEqual(r.status, 0);
  assert.match(r.stderr, /STEWARD_FD is not set: this program is a steward worker/);
  assert.throws(() => {
    const saved = process.env.STEWARD_FD;
    process.env.STEWARD_FD = 'x';
    try {
      new steward.Worker();
    } finally {
      process.env.STEWARD_FD = saved || '';
    }
  }, steward.NotUnderSteward);
});

test('ready, then results of sync and async handlers', async () => {
  const s = await start();
  try {
    assert.deepStrictEqual(await s.next(), { type: 'ready' });
    s.job(7, 'double', { n: 21 });
    assert.deepStrictEqual(await s.next(), { type: 'done', id: 7, result: { doubled: 42, attempt: 1 } });
    s.job(8, 'async');
    assert.deepStrictEqual(await s.next(), { type: 'done', id: 8, result: { queue: 'async' } });
  } finally {
    s.stop();
  }
});

test('exceptions fail, Fail can say no retry, and no handler fails too', async () => {
  const s = await start();
  try {
    await s.next();
    s.job(1, 'throw');
    const m = await s.next();
    assert.strictEqual(m.type, 'fail');
    assert.strictEqual(m.retry, true);
    assert.match(m.error, /TypeError: boom/);
    s.job(2, 'permanent');
    assert.deepStrictEqual(await s.next(), { type: 'fail', id: 2, error: 'bad input', retry: false });
    s.job(3, 'nowhere');
    const n = await s.next();
    assert.match(n.error, /no handler for queue "nowhere"/);
    s.job(4, 'bad-result');
    const b = await s.next();
    assert.strictEqual(b.retry, false);
    assert.match(b.error, /cannot be sent as JSON/);
  } finally {
    s.stop();
  }
});

test('progress, and heartbeats only while a job runs', async () => {
  const s = await start({ STEWARD_HEARTBEAT_MS: '60' });
  try {
    await s.next();
    // Idle: nothing for a while.
    await new Promise((r) => setTimeout(r, 300));
    assert.strictEqual(s.pending(), 0, 'an idle worker sent something');
    s.job(3, 'progress', { ms: 500 });
    assert.deepStrictEqual(await s.until('progress', 3), { type: 'progress', id: 3, progress: 0.5, message: 'halfway' });
    let beats = 0;
    for (;;) {
      const m = await s.next();
      if (m.type === 'heartbeat') beats++;
      if (m.type === 'done') break;
    }
    assert.ok(beats >= 3, `only ${beats} heartbeats`);
  } finally {
    s.stop();
  }
});

test('a cancel reaches the handler, and settles a job whose handler ignores it', async () => {
  const s = await start({ STEWARD_CONCURRENCY: '2' });
  try {
    await s.next();
    s.job(10, 'cancel');
    s.job(11, 'ignore-cancel');
    await new Promise((r) => setTimeout(r, 50));
    s.send({ type: 'cancel', id: 10 });
    s.send({ type: 'cancel', id: 11 });
    const a = await s.until('fail', 10);
    assert.deepStrictEqual(a, { type: 'fail', id: 10, error: 'cancelled', retry: false });
    const b = await s.until('fail', 11);
    assert.strictEqual(b.error, 'cancelled');
    // The ignoring handler's late answer is not sent.
    await new Promise((r) => setTimeout(r, 500));
    assert.strictEqual(s.pending(), 0, 'a late answer was sent');
  } finally {
    s.stop();
  }
});

test('drain finishes the held job, then the worker exits 0', async () => {
  const s = await start();
  try {
    await s.next();
    s.job(5, 'slow');
    await new Promise((r) => setTimeout(r, 50));
    s.send({ type: 'drain' });
    assert.deepStrictEqual(await s.next(), { type: 'done', id: 5, result: 'finished' });
    assert.strictEqual(await s.exited, 0);
  } finally {
    s.stop();
  }
});

test('submit posts to the control socket', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sw-'));
  const socketPath = path.join(dir, 'c.sock');
  let got;
  const http = require('node:http');
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      got = { method: req.method, url: req.url, body: JSON.parse(body) };
      res.writeHead(201, { 'Content-Type': 'application/json' });
      res.end('{"id": 42, "existing": false}');
    });
  });
  await new Promise((r) => server.listen(socketPath, r));
  try {
    const id = await steward.submit('emails', { to: 'a@b' }, { delayMs: 1500, key: 'k', socketPath });
    assert.strictEqual(id, 42);
    assert.deepStrictEqual(got, { method: 'POST', url: '/v1/jobs', body: { queue: 'emails', payload: { to: 'a@b' }, delay_ms: 1500, key: 'k' } });
    await assert.rejects(steward.submit('q', {}, { socketPath: path.join(dir, 'none.sock') }), /cannot reach steward/);
    const saved = process.env.STEWARD_SOCKET;
    delete process.env.STEWARD_SOCKET;
    await assert.rejects(steward.submit('q'), /STEWARD_SOCKET is not set/);
    if (saved !== undefined) process.env.STEWARD_SOCKET = saved;
  } finally {
    server.close();
  }
});
