'use strict';
// A worker written with steward-worker (clients/node), for the integration tests; the
// same payloads as lib_worker.py.
const path = require('path');
const { Worker, Fail } = require(path.join(__dirname, '..', '..', 'clients', 'node'));

const sleep = (ms, signal) =>
  new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(t);
      reject(signal.reason);
    });
  });

const worker = new Worker();
worker.handle(async (job) => {
  const p = job.payload || {};
  if (p.quiet !== undefined) await sleep(p.quiet * 1000, job.signal);
  const steps = Number(p.steps || 0);
  for (let i = 0; i < steps; i++) {
    await job.progress((i + 1) / steps, `step ${i + 1} of ${steps}`);
    await sleep((p.step || 0.5) * 1000, job.signal);
  }
  if (p.fail !== undefined) throw new Fail(p.fail, { retry: p.retry !== false });
  if (p.raise !== undefined) throw new Error(p.raise);
  return { pid: process.pid, attempt: job.attempt };
});
worker.run();
