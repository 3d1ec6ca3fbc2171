"""A plain worker that writes what it was started with (argv and some variables) to
<dir>/<STEWARD_INSTANCE>.json, then runs until it is stopped."""
import json
import os
import sys
import time

out = os.path.join(sys.argv[1], os.environ.get("STEWARD_INSTANCE", "x") + ".json")
names = [n for n in os.environ if not n.startswith(("LC_", "PWD", "SHLVL", "_"))]
record = {"argv": sys.argv[2:], "env": {n: os.environ[n] for n in names}}
tmp = out + ".tmp"
with open(tmp, "w") as f:
    json.dump(record, f)
os.rename(tmp, out)
while True:
    time.sleep(1)
