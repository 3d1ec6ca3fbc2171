#!/usr/bin/env python3
"""A worker that logs the way common logging libraries do, then waits.

--style pino       one JSON object per line, pino's numeric levels and `msg`
--style structlog  one JSON object per line, level names and `event`
--style pretty     pino-pretty's coloured text
--style text       plain text lines starting with a level word
--style alarm      ten numbered error lines of 1 KB on stderr, and the last number
                   written to the file after --count-file
--every SECONDS    repeat the lines, numbered, this often (default: once)
"""
import os
import json
import sys
import time

style = sys.argv[sys.argv.index("--style") + 1]
every = float(sys.argv[sys.argv.index("--every") + 1]) if "--every" in sys.argv else 0


def emit(n):
    if style == "pino":
        base = {"time": 1764720000000 + n, "pid": 4242, "hostname": "vm-7"}
        for level, msg in [(30, "listening"), (40, "slow upstream"), (50, "upload failed"), (60, "out of disk")]:
            line = dict(base, level=level, msg=f"{msg} #{n}", reqId=f"r-{n}", attempt=2, ok=False, nested={"a": 1})
            print(json.dumps(line), flush=True)
    elif style == "structlog":
        for level, event in [("info", "cache warm"), ("warning", "cache miss"), ("error", "cache down")]:
            line = {"event": f"{event} #{n}", "level": level, "logger": "app.cache", "key": "user:1", "timestamp": "2026-12-03T10:00:00Z"}
            print(json.dumps(line), file=sys.stderr, flush=True)
    elif style == "pretty":
        print(f"\x1b[90m[10:00:00.000]\x1b[39m \x1b[31mERROR\x1b[39m (4242): \x1b[36mpretty failure #{n}\x1b[39m", flush=True)
    elif style == "alarm":
        count_file = sys.argv[sys.argv.index("--count-file") + 1]
        for i in range(10):
            k = (n - 1) * 10 + i + 1
            print(f"<3>alarm {k} " + "p" * 1000, file=sys.stderr, flush=True)
        with open(count_file + ".new", "w") as f:
            f.write(str(n * 10))
        os.replace(count_file + ".new", count_file)
    elif style == "text":
        print(f"ERROR: text failure #{n}", flush=True)
        print(f"WARN text warning #{n}", flush=True)
        print(f"plain text #{n}", flush=True)


n = 1
emit(n)
while True:
    if every:
        time.sleep(every)
        n += 1
        emit(n)
    else:
        time.sleep(1000)
