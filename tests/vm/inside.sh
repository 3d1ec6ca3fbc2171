#!/bin/bash
# Runs as root inside the VM of tests/vm/cgroups.sh (a real kernel with the memory, pids
# and cpu controllers): installs steward and checks what only a real kernel enforces.
set -u
PASSED=0
FAILED=0
CONF=/etc/steward/steward.toml
UNIT_CG=/sys/fs/cgroup/system.slice/steward.service
say() { echo "[$(cut -d' ' -f1 /proc/uptime)] $*"; }
pass() { PASSED=$((PASSED + 1)); say "PASS $*"; }
fail() {
    FAILED=$((FAILED + 1))
    say "FAIL $*"
    systemctl status --no-pager -l steward.service 2>&1 | tail -20
    journalctl -u steward.service --no-pager -n 60 2>&1
}
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
# Poll a shell snippet until it succeeds or $1 seconds pass.
wait_for() {
    local end=$((SECONDS + $1)); shift
    while ((SECONDS < end)); do
        bash -c "$*" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    return 1
}
journal_has() { journalctl -u steward.service --no-pager | grep -q -- "$1"; }
metrics() { python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9187/metrics").read().decode())'; }
worker_cgroup() { ls -d "$UNIT_CG"/w/"$1".* 2>/dev/null | head -1; }

say "kernel $(uname -r); controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
dpkg -i /mnt/artifacts/steward.deb >/tmp/dpkg.log 2>&1 || { cat /tmp/dpkg.log; exit 1; }
systemctl is-active steward.service || exit 1

cat >$CONF <<'TOML'
[http]
listen = "127.0.0.1:9187"

[queue.oom]
retry_backoff = { initial = "200ms", max = "1s" }
max_attempts = 10

[pool.hog]
command = ["/usr/bin/tail", "/dev/zero"]
stable_after = "2s"
backoff = { initial = "2s", max = "4s" }

[pool.hog.limits]
memory_max = "32M"

[pool.forker]
# Forks 40 sleepers; past pids_max a fork fails (EAGAIN) and it says so, then waits.
command = ["/usr/bin/python3", "-c", "import os, time\nfor i in range(40):\n    try:\n        if os.fork() == 0:\n            time.sleep(1000)\n            os._exit(0)\n    except OSError as e:\n        print('fork failed:', e, flush=True)\ntime.sleep(1000)"]

[pool.forker.limits]
pids_max = 10
cpu_max = "50%"
cpu_weight = 50

[pool.grower]
command = ["/usr/bin/python3", "-c", "import time\nb = []\nwhile True:\n    b.append(b\"x\" * (2 << 20))\n    time.sleep(0.2)"]
stable_after = "1s"

[pool.grower.limits]
memory_max = "256M"
recycle_above = "40M"

[pool.oomjobs]
mode = "exec"
queues = ["oom"]
instances = 1
command = ["/bin/sh", "-c", "cat >/dev/null; exec tail /dev/zero"]

[pool.oomjobs.limits]
memory_max = "32M"
TOML
systemctl reload steward.service || { fail "reload"; exit 1; }

step_tree() {
    grep -qx '0::/system.slice/steward.service/supervisor' "/proc/$(systemctl show -P MainPID steward)/cgroup" || return 1
    wait_for 60 "ls -d $UNIT_CG/w/forker.* $UNIT_CG/w/grower.*" || return 1
    local f; f=$(worker_cgroup forker)
    [[ "$(cat "$f/pids.max")" == 10 && "$(cat "$f/cpu.max")" == "50000 100000" && "$(cat "$f/cpu.weight")" == 50 ]] || { say "forker: $(cat "$f/pids.max") / $(cat "$f/cpu.max") / $(cat "$f/cpu.weight")"; return 1; }
    ! journal_has "limits not enforced" || { say "a limit was said unenforced on a kernel that has every controller"; return 1; }
}
check "the daemon in <unit>/supervisor, workers' cgroups with their limits, every controller there" step_tree

step_oom() {
    local forker_pid
    forker_pid=$(cat "$(worker_cgroup forker)/cgroup.procs" | head -1)
    wait_for 90 "journalctl -u steward.service --no-pager | grep -q 'worker hog/0 .*exited: killed by the OOM killer (memory_max 32M, peak 3[0-9.]*M)'" ||
        { say "no named OOM kill of hog"; return 1; }
    steward status --json | grep -q '"description": "killed by the OOM killer (memory_max 32M' || { say "not in status"; return 1; }
    local n; n=$(metrics | sed -n 's/^steward_worker_oom_kills_total{pool="hog"} //p')
    [[ -n "$n" && "$n" -ge 1 ]] || { say "steward_worker_oom_kills_total{pool=hog} = '$n'"; return 1; }
    # Its siblings and the daemon live on.
    [[ -d /proc/$forker_pid ]] || { say "the forker died with the hog"; return 1; }
    [[ "$(systemctl is-active steward)" == active ]] || return 1
    say "hog: $(journalctl -u steward.service --no-pager -o cat | grep -m1 'killed by the OOM killer')"
}
check "memory_max enforced: the worker is OOM-killed and the exit says so (journal, status, metrics); siblings and daemon live on" step_oom

step_pids() {
    local f; f=$(worker_cgroup forker)
    wait_for 30 "grep -q '^max [1-9]' $f/pids.events" || { say "pids.events: $(cat "$f/pids.events")"; return 1; }
    local n; n=$(cat "$f/pids.current")
    [[ $n -le 10 ]] || { say "pids.current $n above pids_max 10"; return 1; }
    journal_has "fork failed: \[Errno 11\] Resource temporarily unavailable" || { say "the forker saw no failed fork"; return 1; }
    say "forker: pids.current $n, $(cat "$f/pids.events")"
}
check "pids_max enforced: forks past it fail, the worker's tree stays at 10" step_pids

step_recycle() {
    wait_for 120 "journalctl -u steward.service --no-pager | grep -q 'worker grower/0 uses .* of memory, above its pool.s recycle_above (40M): restarting it gracefully'" ||
        { say "grower not recycled; memory $(cat "$(worker_cgroup grower)/memory.current")"; return 1; }
    # A planned restart: not an unstable exit, not an OOM kill.
    ! journal_has "worker grower/0 .*killed by the OOM killer" || { say "grower was OOM-killed instead"; return 1; }
    wait_for 30 "steward status --json | python3 -c 'import json,sys; s=json.load(sys.stdin); w=[p for p in s[\"pools\"] if p[\"name\"]==\"grower\"][0][\"workers\"][0]; sys.exit(0 if w[\"restarts\"]>=1 and w[\"unstable_exits\"]==0 else 1)'" ||
        { say "grower after recycling: $(steward status --json | grep -A12 '"name": "grower"' | head -30)"; return 1; }
}
check "recycle_above: a growing worker is restarted gracefully before memory_max" step_recycle

step_job() {
    local id; id=$(steward submit oom '{}') || return 1
    wait_for 120 "steward job $id --json | grep -q '\"state\": \"failed\"'" || { say "job $id: $(steward job "$id")"; return 1; }
    local j; j=$(steward job "$id" --json)
    local n; n=$(grep -c 'killed by the OOM killer (memory_max 32M' <<<"$j")
    [[ $n -ge 3 ]] || { say "job $id: $j"; return 1; }
    say "job $id: $(steward job "$id" | head -12)"
}
check "a job whose process is OOM-killed 3 times is quarantined as failed, each attempt saying why" step_job

# The cost of cgroups: exec throughput (200 jobs of /bin/true, 2 lanes) and respawn
# time (a worker killed → its replacement started, median of 10), with and without.
measure() {
    python3 - <<'PY'
import http.client, json, os, signal, socket, statistics, time
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect("/run/steward/steward.sock")
def call(method, path, body=None):
    c = Unix("localhost")
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    return r.status, json.loads(r.read() or b"null")
def rate():
    t0 = time.monotonic()
    status, answer = call("POST", "/v1/jobs/batch", {"jobs": [{"queue": "fast"} for _ in range(200)]})
    assert status == 201, (status, answer)
    while True:
        _, s = call("GET", "/v1/status")
        q = [x for x in s["queues"] if x["name"] == "fast"][0]
        if q["queued"] == 0 and q["running"] == 0:
            return 200 / (time.monotonic() - t0)
        time.sleep(0.05)
def worker_pid():
    _, s = call("GET", "/v1/status")
    w = [p for p in s["pools"] if p["name"] == "respawn"][0]["workers"][0]
    return w["pid"] if w["state"] == "running" else None
def respawn():
    times = []
    for _ in range(10):
        while (pid := worker_pid()) is None:
            time.sleep(0.05)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        while True:
            _, s = call("GET", "/v1/status")
            w = [p for p in s["pools"] if p["name"] == "respawn"][0]["workers"][0]
            if w["pid"] not in (None, pid):
                times.append((time.monotonic() - t0) * 1000)
                break
        time.sleep(0.3)
    return statistics.median(times)
rate()  # warm up
print("%.1f jobs/s, respawn %.0f ms" % (rate(), respawn()))
PY
}
bench_config() {
    cat >$CONF <<TOML
[daemon]
cgroups = "$1"

[queue.fast]

[pool.fast]
mode = "exec"
queues = ["fast"]
instances = 2
command = ["/bin/true"]

[pool.fast.limits]
memory_max = "64M"

[pool.respawn]
command = ["/bin/sleep", "1000"]
stable_after = "100ms"
backoff = { initial = "0s", jitter = 0.0 }

[pool.respawn.limits]
memory_max = "64M"
TOML
}
step_cost() {
    local on off
    bench_config auto && systemctl restart steward || return 1
    on=$(measure) || return 1
    bench_config off && systemctl restart steward || return 1
    off=$(measure) || return 1
    say "COST under emulation: with cgroups $on; without $off"
}
check "cost of cgroups measured (exec throughput, respawn)" step_cost

step_stop() {
    systemctl stop steward.service || return 1
    local left; left=$(find "$UNIT_CG" -name cgroup.procs -exec cat {} + 2>/dev/null)
    [[ -z "$left" ]] || { say "left after stop: $left"; return 1; }
}
check "systemctl stop leaves no process in the unit's cgroups" step_stop

say "in the VM: $PASSED passed, $FAILED failed"
((FAILED == 0))
