#!/usr/bin/env node
// An example steward worker in Node.js, written with the steward-worker library.
//
// Jobs whose payload looks like {"seconds": 2} take that long, reporting progress;
// {"fail": "why"} fails (add "retry": false to fail at once); anything else is echoed
// back. Install the library with `npm install ./clients/node` (or
// `npm install /usr/share/steward/clients/node` where the .deb is installed); without
// that, this example finds it in a checkout or in /usr/share/steward/clients/node.
'use strict';
const path = require('path');

function library() {
  for (const where of ['steward-worker', path.join(__dirname, '..', '..', 'clients', 'node'), '/usr/share/steward/clients/node']) {
    try {
      return require(where);
    } catch (e) {
      if (e.code !== 'MODULE_NOT_FOUND') throw e;
    }
  }
  throw new Error('the steward-worker library is not installed: npm install /usr/share/steward/clients/node');
}
const { Worker, Fail } = library();

const worker = new Worker();
const name = `${worker.pool}/${worker.instance}`;

worker.handle(async (job) => {
  const p = job.payload || {};
  if (p.fail !== undefined) throw new Fail(String(p.fail), { retry: p.retry !== false });
  const ms = Number(p.seconds || 0) * 1000;
  const started = Date.now();
  while (Date.now() - started < ms) {
    await new Promise((r) => setTimeout(r, Math.min(200, ms)));
    job.throwIfCancelled();
    await job.progress(Math.min(1, (Date.now() - started) / ms));
  }
  console.log(`job ${job.id} done on ${name}`);
  return { echo: p, worker: name, pid: process.pid };
});

worker.run();
