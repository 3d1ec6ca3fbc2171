#!/usr/bin/env node
// An example steward worker in Node.js, using only the standard library.
//
// steward starts it with a connected Unix socket whose descriptor number is in
// STEWARD_FD. Both sides send one JSON object per line. Jobs whose payload looks like
// {"seconds": 2} take that long; {"fail": "why"} fails; anything else is echoed back.
'use strict';
const net = require('net');
const readline = require('readline');

const sock = new net.Socket({ fd: Number(process.env.STEWARD_FD), readable: true, writable: true });
const name = `${process.env.STEWARD_POOL}/${process.env.STEWARD_INSTANCE}`;
const send = (msg) => sock.write(JSON.stringify(msg) + '\n');
const cancelled = new Set();

async function work(job) {
  const p = job.payload || {};
  if (p.fail !== undefined) {
    send({ type: 'fail', id: job.id, error: String(p.fail), retry: p.retry !== false });
    return;
  }
  const ms = Number(p.seconds || 0) * 1000;
  const started = Date.now();
  while (Date.now() - started < ms) {
    await new Promise((r) => setTimeout(r, Math.min(200, ms)));
    if (cancelled.has(job.id)) {
      send({ type: 'fail', id: job.id, error: 'cancelled', retry: false });
      return;
    }
    send({ type: 'progress', id: job.id, progress: Math.min(1, (Date.now() - started) / ms) });
  }
  console.log(`job ${job.id} done on ${name}`);
  send({ type: 'done', id: job.id, result: { echo: p, worker: name, pid: process.pid } });
}

const lines = readline.createInterface({ input: sock });
lines.on('line', (line) => {
  const msg = JSON.parse(line);
  if (msg.type === 'job') work(msg);
  else if (msg.type === 'cancel') cancelled.add(msg.id);
  else if (msg.type === 'error') console.error(`steward says: ${msg.message}`);
});
lines.on('close', () => process.exit(0));
send({ type: 'ready' });
