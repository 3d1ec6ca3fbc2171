#!/usr/bin/env bash
# End-to-end test of the steward .deb under a real systemd.
#
# Boots systemd as PID 1 of a systemd-nspawn container on a Debian 12 (bookworm) rootfs
# made with debootstrap, installs the package with apt, and walks through what an
# operator does: install, configure a pool, submit jobs as a member of group steward,
# read the journal, survive a watchdog kill and a kill -9, reject a broken reload, stop
# cleanly, upgrade over an edited conffile, remove and purge.
#
# Usage (as root):  tests/e2e/systemd.sh OLD.deb NEW.deb
#   OLD.deb is installed first; NEW.deb (a higher version) is the upgrade.
# Environment: E2E_DIR (rootfs cache and run logs, default /var/tmp/steward-e2e),
#   E2E_MIRROR (default: the host's apt mirror), E2E_LIFETIME (seconds, default 900).
set -Eeuo pipefail

OLD_DEB=$(readlink -f "${1:?usage: systemd.sh OLD.deb NEW.deb}")
NEW_DEB=$(readlink -f "${2:?usage: systemd.sh OLD.deb NEW.deb}")
HERE=$(cd "$(dirname "$0")" && pwd)
WORK="${E2E_DIR:-/var/tmp/steward-e2e}"
# python3 (not just python3-minimal, which lacks json) for the example workers; procps
# for the `kill` this script sends into the container.
PACKAGES="systemd,systemd-sysv,dbus,python3,procps"
ROOTFS="$WORK/rootfs-bookworm-$(printf '%s' "$PACKAGES" | md5sum | cut -c1-8)"
LIFETIME="${E2E_LIFETIME:-900}"
RUN="$WORK/run-$(date +%Y%m%d-%H%M%S)-$$"
ART="$RUN/artifacts"
CGROUP="steward-e2e-$$"
mkdir -p "$ART"
LOG="$RUN/e2e.log"
NSPAWN=""
PID1=""
FAILED=0
PASSED=0

say() { printf '[%s] %s\n' "$(date +%T)" "$*" | tee -a "$LOG" >&2; }

[[ $EUID -eq 0 ]] || { echo "the systemd end-to-end test must run as root" >&2; exit 2; }

# --------------------------------------------------------------------------- host
need=()
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
    say "installing ${need[*]}"
    apt-get update -q >>"$LOG" 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >>"$LOG" 2>&1
fi

mirror() {
    if [[ -n "${E2E_MIRROR:-}" ]]; then echo "$E2E_MIRROR"; return; fi
    local m=""
    [[ -f /etc/apt/sources.list.d/debian.sources ]] &&
        m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    [[ -z "$m" && -f /etc/apt/sources.list ]] &&
        m=$(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list)
    [[ -n "$m" ]] || { echo "no Debian mirror in the host's apt sources; set E2E_MIRROR" >&2; exit 2; }
    echo "$m"
}

if [[ ! -f "$ROOTFS/.complete" ]]; then
    say "building the bookworm rootfs (cached in $ROOTFS)"
    rm -rf "$ROOTFS" "$ROOTFS.partial"
    timeout 1200 debootstrap --variant=minbase --include="$PACKAGES" \
        bookworm "$ROOTFS.partial" "$(mirror)" >"$RUN/debootstrap.log" 2>&1 ||
        { tail -20 "$RUN/debootstrap.log"; exit 1; }
    : >"$ROOTFS.partial/etc/machine-id"
    echo steward-e2e >"$ROOTFS.partial/etc/hostname"
    ln -sf /dev/null "$ROOTFS.partial/etc/systemd/system/console-getty.service"
    ln -sf /dev/null "$ROOTFS.partial/etc/systemd/system/getty@.service"
    touch "$ROOTFS.partial/.complete"
    mv "$ROOTFS.partial" "$ROOTFS"
fi

cp "$OLD_DEB" "$ART/old.deb"
cp "$NEW_DEB" "$ART/new.deb"

# ---------------------------------------------------------------------- container
cleanup() {
    local rc=$?
    set +e
    if [[ -n "$NSPAWN" ]] && kill -0 "$NSPAWN" 2>/dev/null; then
        kill -TERM "$NSPAWN"
        for _ in $(seq 50); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$NSPAWN" 2>/dev/null
    fi
    for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified /sys/fs/cgroup; do
        [[ -d "$h/$CGROUP" ]] && find "$h/$CGROUP" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    exit "$rc"
}
trap cleanup EXIT

say "booting systemd in a container (logs in $RUN)"
(
    # A cgroup of our own, so that nspawn can manage the payload's cgroup without a
    # host systemd.
    for h in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified; do
        [[ -d $h ]] && mkdir -p "$h/$CGROUP" && echo "$BASHPID" >"$h/$CGROUP/cgroup.procs"
    done
    exec timeout -s TERM -k 30 "$LIFETIME" env SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 \
        systemd-nspawn --boot --register=no --keep-unit --volatile=overlay --console=passive \
        --private-network --machine="steward-e2e-$$" -D "$ROOTFS" --bind-ro="$ART:/mnt/artifacts"
) >"$RUN/console.log" 2>&1 </dev/null &
NSPAWN=$!
for _ in $(seq 300); do
    for p in $(pgrep -P "$NSPAWN" 2>/dev/null) $(pgrep -f "systemd-nspawn.*steward-e2e-$$" 2>/dev/null); do
        for c in $(pgrep -P "$p" 2>/dev/null) "$p"; do
            [[ "$(cat /proc/$c/comm 2>/dev/null)" == systemd ]] && PID1=$c
        done
    done
    [[ -n "$PID1" ]] && break
    sleep 0.1
done
[[ -n "$PID1" ]] || { say "the container's systemd did not start"; cat "$RUN/console.log"; exit 1; }

# Run a command inside the container, bounded in time.
ctr() {
    local t=60
    if [[ "$1" == -t ]]; then t=$2; shift 2; fi
    timeout -k 5 "$t" nsenter -t "$PID1" -a -- /usr/bin/env -i \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        SYSTEMD_PAGER= SYSTEMD_COLORS=0 DEBIAN_FRONTEND=noninteractive "$@"
}
prop() { ctr systemctl show -P "$1" steward.service; }
# Output is captured before it is searched: `producer | grep -q` fails under pipefail
# whenever grep exits before the producer has finished writing.
journal_has() { local j; j=$(journal); grep -q "$1" <<<"$j"; }
# The unit's journal, with every message sent before the call stored first: journald
# reads its sockets on its own schedule, so a line systemd logged just before
# `systemctl` returned may not be readable yet without --sync.
journal() { ctr journalctl --sync && ctr journalctl -u steward.service --no-pager "$@"; }

# Poll a shell snippet inside the container until it succeeds or $1 seconds pass.
wait_in() {
    local limit=$1; shift
    local end=$((SECONDS + limit))
    while ((SECONDS < end)); do
        ctr -t 20 sh -c "$*" >/dev/null 2>&1 && return 0
        sleep 0.3
    done
    return 1
}

for _ in $(seq 100); do
    st=$(ctr -t 60 systemctl is-system-running --wait 2>/dev/null) || true
    case "$st" in running | degraded) break ;; esac
    sleep 0.2
done
say "container is up: $st"

dump() {
    {
        echo "----- systemctl status steward"
        ctr systemctl status --no-pager -l steward.service
        echo "----- journalctl -u steward (last 150 lines)"
        ctr journalctl -u steward.service --no-pager -n 150
    } 2>&1 | tee -a "$LOG" >&2 || true
}
pass() { PASSED=$((PASSED + 1)); say "PASS $*"; }
fail() { FAILED=$((FAILED + 1)); say "FAIL $*"; dump; }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }

CONF=/etc/steward/steward.toml
POOL_CONFIG='
[queue.demo]
lease = "30s"

[pool.python]
command = ["/usr/bin/python3", "/usr/share/doc/steward/examples/worker.py"]
instances = 2
queues = ["demo"]
stable_after = "1s"
'
as_alice() { ctr runuser -u alice -- steward "$@"; }
job_state() { as_alice job "$1" --json | sed -n 's/^  "state": "\(.*\)",$/\1/p'; }
worker_pids() { ctr steward status --json | sed -n 's/^ *"pid": \([0-9]*\),$/\1/p' | sed 1d; }

# ---------------------------------------------------------------- 1. install
step1() {
    ctr -t 300 sh -c 'cd /mnt/artifacts && apt-get install -y -q ./old.deb' >>"$LOG" 2>&1 || return 1
    [[ "$(ctr systemctl is-enabled steward.service)" == enabled ]] || { say "not enabled"; return 1; }
    [[ "$(prop ActiveState)/$(prop SubState)" == active/running ]] || { say "not running"; return 1; }
    # `systemctl start` returns only after READY=1: right after it returns, the control
    # socket answers and the journal shows steward's ready line before systemd's "Started".
    ctr systemctl stop steward.service
    ctr -t 60 systemctl start steward.service || return 1
    local s
    s=$(ctr steward status --json) && grep -q '"state": "running"' <<<"$s" || { say "not answering right after start"; return 1; }
    local j; j=$(journal -b -o cat)
    local ready started
    ready=$(grep -n "steward is ready" <<<"$j" | tail -1 | cut -d: -f1)
    started=$(grep -n "Started steward" <<<"$j" | tail -1 | cut -d: -f1)
    [[ -n "$ready" && -n "$started" && "$ready" -lt "$started" ]] || { say "ready=$ready started=$started"; return 1; }
    local st; st=$(prop StatusText)
    say "StatusText=$st"
    [[ "$st" == *"workers up"* ]]
}
check "1. apt-get install: enabled, active (running), start waits for READY=1, StatusText set" step1

# ------------------------------------------------------------- 2. add a pool
step2() {
    local pid0; pid0=$(prop MainPID)
    printf '%s' "$POOL_CONFIG" | ctr sh -c "cat >> $CONF"
    ctr systemctl reload steward.service || return 1
    wait_in 30 "steward status --json | grep -c '\"state\": \"running\"' | grep -qx 3" || return 1
    [[ "$(prop MainPID)" == "$pid0" ]] || { say "MainPID changed on reload"; return 1; }
    # STATUS= is refreshed at most once a second.
    wait_in 5 "systemctl show -P StatusText steward | grep -q '2/2 workers up'" ||
        { say "StatusText=$(prop StatusText)"; return 1; }
}
check "2. reload with a pool: workers running, same daemon PID" step2

# ------------------------------------------------------------- 2b. cgroups
# The container delegates cgroups but has no resource controllers: the tree is real,
# the limits are not enforced (and steward says so).
UNIT_CG=/sys/fs/cgroup/system.slice/steward.service
ESCAPE_POOL='
[pool.escape]
command = ["/bin/sh", "-c", "setsid sleep 4242 & exec sleep 4343"]
stable_after = "1s"

[pool.escape.limits]
memory_max = "64M"
pids_max = 32
'
step2b() {
    local main cg wpid gpid
    main=$(prop MainPID)
    cg=$(ctr grep '^0::' "/proc/$main/cgroup")
    [[ "$cg" == "0::/system.slice/steward.service/supervisor" ]] || { say "the daemon is in $cg"; return 1; }
    for wpid in $(worker_pids); do
        cg=$(ctr grep '^0::' "/proc/$wpid/cgroup")
        [[ "$cg" == 0::/system.slice/steward.service/w/python.* ]] || { say "worker $wpid is in $cg"; return 1; }
    done
    journal_has "each worker and job process runs in a cgroup of its own" || { say "no cgroup line at start"; return 1; }
    ctr cp $CONF /root/steward.toml.before-escape
    printf '%s' "$ESCAPE_POOL" | ctr sh -c "cat >> $CONF"
    ctr systemctl reload steward.service || return 1
    wait_in 30 "pgrep -f '^sleep 4242\$' >/dev/null && pgrep -f '^sleep 4343\$' >/dev/null" || { say "escape pool not up"; return 1; }
    gpid=$(ctr pgrep -f '^sleep 4242$'); wpid=$(ctr pgrep -f '^sleep 4343$')
    # The grandchild left its worker's process group and session, not its cgroup.
    [[ "$(ctr ps -o pgid= -p "$gpid" | tr -d ' ')" != "$(ctr ps -o pgid= -p "$wpid" | tr -d ' ')" ]] || { say "the grandchild did not leave the process group"; return 1; }
    [[ "$(ctr grep '^0::' "/proc/$gpid/cgroup")" == "$(ctr grep '^0::' "/proc/$wpid/cgroup")" ]] || { say "grandchild and worker in different cgroups"; return 1; }
    ctr kill -9 "$wpid"
    wait_in 20 "! test -d /proc/$gpid || grep -q '^State:.*Z' /proc/$gpid/status" || { say "the escaped grandchild $gpid outlived its worker"; return 1; }
    # Restarted in a fresh cgroup; the old one is gone.
    wait_in 30 "pgrep -f '^sleep 4343\$' >/dev/null && [ \$(ls -d $UNIT_CG/w/escape.* | wc -l) -eq 1 ]" || { say "cgroups left: $(ctr ls $UNIT_CG/w)"; return 1; }
    journal_has "pool escape: limits not enforced: memory_max (no memory controller), pids_max (no pids controller)" || { say "no 'limits not enforced' warning"; return 1; }
    local st; st=$(ctr steward status)
    grep -q "limits NOT enforced: memory_max (no memory controller)" <<<"$st" || { say "status: $st"; return 1; }
    grep -q "cgroups  one per worker under $UNIT_CG/w" <<<"$st" || { say "status: $st"; return 1; }
    ctr cp /root/steward.toml.before-escape $CONF
    ctr systemctl reload steward.service || return 1
    wait_in 30 "! pgrep -f '^sleep 4343\$' >/dev/null && ! pgrep -f '^sleep 4242\$' >/dev/null && [ -z \"\$(ls $UNIT_CG/w | grep escape)\" ]" || { say "the removed pool left processes or cgroups"; return 1; }
}
check "2b. cgroups: daemon in <unit>/supervisor, a cgroup per worker, an escaped grandchild dies with its worker, unenforced limits said" step2b

# ------------------------------------------------------- 2c. worker log lines
# JSON lines of pino and structlog become journal records with their message, priority
# and APP_ fields; pino-pretty's colours are removed, so the message is text, not a blob.
LOG_POOLS='
[pool.pino]
command = ["/usr/bin/python3", "/usr/local/lib/app_logger.py", "--style", "pino"]
stable_after = "1s"

[pool.structlog]
command = ["/usr/bin/python3", "/usr/local/lib/app_logger.py", "--style", "structlog"]
stable_after = "1s"

[pool.pretty]
command = ["/usr/bin/python3", "/usr/local/lib/app_logger.py", "--style", "pretty"]
stable_after = "1s"
'
step2c() {
    ctr sh -c 'cat > /usr/local/lib/app_logger.py' <"$HERE/../workers/app_logger.py" || return 1
    ctr cp $CONF /root/steward.toml.before-logs
    printf '%s' "$LOG_POOLS" | ctr sh -c "cat >> $CONF"
    ctr systemctl reload steward.service || return 1
    wait_in 30 "journalctl -u steward.service POOL=structlog -o cat | grep -q 'cache down #1' && journalctl -u steward.service POOL=pino -o cat | grep -q 'out of disk #1' && journalctl -u steward.service POOL=pretty -o cat | grep -q 'pretty failure #1'" ||
        { say "the log pools' lines are not in the journal"; return 1; }
    journal -o json POOL=pino + POOL=structlog + POOL=pretty >"$RUN/log-pools.json" || return 1
    python3 - "$RUN/log-pools.json" <<'PY' >>"$LOG" 2>&1 || { say "journal fields: see $LOG"; return 1; }
import json, sys
records = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def one(message):
    found = [r for r in records if r.get("MESSAGE") == message]
    assert found, f"no record {message!r}; messages: {[r.get('MESSAGE') for r in records]}"
    return found[0]
r = one("upload failed #1")
assert (r["PRIORITY"], r["POOL"], r["STREAM"]) == ("3", "pino", "stdout"), r
assert (r["APP_REQID"], r["APP_HOSTNAME"], r["APP_ATTEMPT"], r["APP_OK"]) == ("r-1", "vm-7", "2", "false"), r
assert "APP_MSG" not in r and "APP_LEVEL" not in r and "APP_NESTED" not in r, r
assert one("out of disk #1")["PRIORITY"] == "2"
assert one("slow upstream #1")["PRIORITY"] == "4"
assert one("listening #1")["PRIORITY"] == "6"
r = one("cache miss #1")
assert (r["PRIORITY"], r["APP_LOGGER"], r["APP_KEY"], r["STREAM"]) == ("4", "app.cache", "user:1", "stderr"), r
assert one("cache down #1")["PRIORITY"] == "3"
# A blob would be a list of byte values, not this string.
assert one("[10:00:00.000] ERROR (4242): pretty failure #1")["POOL"] == "pretty"
print("journal fields and priorities as expected")
PY
    # journalctl's own priority filter sees them.
    local errs; errs=$(journal -p err -o cat POOL=pino)
    grep -q "upload failed #1" <<<"$errs" && ! grep -q "slow upstream #1" <<<"$errs" || { say "journalctl -p err: $errs"; return 1; }
    ctr cp /root/steward.toml.before-logs $CONF
    ctr systemctl reload steward.service || return 1
}
check "2c. worker logs: pino and structlog JSON lines as journal records with priority and APP_ fields, colours removed" step2c

# ------------------------------------------------------- 3. submit as a member
step3() {
    ctr useradd -m alice && ctr usermod -aG steward alice || return 1
    local i
    for i in $(seq 1 100); do
        as_alice submit demo "{\"n\": $i}" >/dev/null || { say "submit $i failed"; return 1; }
    done
    wait_in 90 "[ \$(steward jobs --state succeeded --limit 500 --json | grep -c '\"state\": \"succeeded\"') -eq 100 ]"
}
check "3. a user in group steward submits 100 jobs; all succeed" step3

# ------------------------------------------- 3b. logs, stop and start a pool
step3b() {
    local out
    out=$(ctr steward logs python -n 200 -o cat) || { say "steward logs python failed: $out"; return 1; }
    grep -q "done on python/" <<<"$out" || { say "steward logs python: $out"; return 1; }
    ! grep -q "steward is ready" <<<"$out" || { say "steward logs python shows other records"; return 1; }
    out=$(ctr steward logs --job 42 -o cat) || return 1
    grep -q "job 42" <<<"$out" || { say "steward logs --job 42: $out"; return 1; }
    # alice may use the socket, not read the system journal: she is told what to do.
    out=$(as_alice logs -n 1 2>&1) && { say "alice read the journal"; return 1; }
    grep -q "systemd-journal" <<<"$out" || { say "alice was told: $out"; return 1; }
    as_alice stop python >/dev/null || return 1
    wait_in 30 "[ -z \"\$(pgrep -f examples/[w]orker.py)\" ]" || { say "workers left after stop"; return 1; }
    ctr -t 90 systemctl restart steward.service || return 1
    sleep 2
    [[ -z "$(ctr pgrep -f "examples/[w]orker.py")" ]] || { say "the stopped pool came back after a restart"; return 1; }
    ctr steward status | grep -q "stopped by the operator" || { say "status does not say stopped"; return 1; }
    as_alice start python >/dev/null || return 1
    wait_in 30 "steward status --json | grep -c '\"state\": \"running\"' | grep -qx 3" || { say "pool not back after start"; return 1; }
}
check "3b. steward logs for a pool and a job (and a clear refusal without journal access); stop holds across a restart, start brings the pool back" step3b

# ------------------------------------------------------------------ 4. journal
step4() {
    local j; j=$(journal -o json)
    grep -q '"POOL":"python"' <<<"$j" && grep -q '"INSTANCE":"0"' <<<"$j" && grep -q '"STREAM":"stdout"' <<<"$j" ||
        { say "no worker output with POOL/INSTANCE/STREAM"; return 1; }
    grep -q '"JOB_ID":"42"' <<<"$j" || { say "no JOB_ID fields"; return 1; }
    grep '"MESSAGE":"steward is ready' <<<"$j" | grep -q '"PRIORITY":"6"' || { say "INFO is not priority 6"; return 1; }
    local story; story=$(journal JOB_ID=42 -o cat)
    say "journalctl -u steward JOB_ID=42:"; printf '%s\n' "$story" | tee -a "$LOG" >&2
    grep -q "job 42 submitted" <<<"$story" && grep -q "job 42 attempt 1 started on worker" <<<"$story" &&
        grep -q "job 42 done on python/" <<<"$story" && grep -q "job 42 succeeded" <<<"$story"
}
check "4. journal: worker lines with POOL/INSTANCE, job lines with JOB_ID; JOB_ID=42 tells the story" step4

# ----------------------------------------------------------------- 5. watchdog
step5() {
    ctr mkdir -p /etc/systemd/system/steward.service.d
    printf '[Service]\nWatchdogSec=3s\n' | ctr sh -c 'cat > /etc/systemd/system/steward.service.d/e2e-watchdog.conf'
    ctr systemctl daemon-reload && ctr -t 90 systemctl restart steward.service || return 1
    wait_in 30 "steward status --json | grep -c '\"state\": \"running\"' | grep -qx 3" || return 1
    local n0 pid0 id olds
    n0=$(prop NRestarts); pid0=$(prop MainPID)
    id=$(as_alice submit demo '{"seconds": 8}') || return 1
    wait_in 20 "steward job $id --json | grep -q '\"state\": \"running\"'" || return 1
    olds=$(worker_pids)
    ctr kill -STOP "$pid0"
    wait_in 40 "[ \$(systemctl show -P NRestarts steward) -eq $((n0 + 1)) ] && [ \$(systemctl show -P SubState steward) = running ]" ||
        { say "no watchdog restart"; return 1; }
    journal_has "Watchdog timeout" || { say "no 'Watchdog timeout'"; return 1; }
    local p
    for p in $olds; do
        if ctr test -d "/proc/$p" && ! ctr grep -q '^State:.*Z' "/proc/$p/status"; then say "old worker $p survived"; return 1; fi
    done
    wait_in 60 "steward job $id --json | grep -q '\"state\": \"succeeded\"'" || { say "job $id not reclaimed"; return 1; }
    as_alice job "$id" --json | grep -q '"outcome": "interrupted"'
}
check "5. watchdog: SIGSTOP'd daemon killed and restarted (NRestarts+1), old workers gone, job reclaimed and succeeded" step5

# ------------------------------------------------------------------ 6. kill -9
step6() {
    wait_in 30 "steward status --json | grep -c '\"state\": \"running\"' | grep -qx 3" || return 1
    local n0 pid0 id olds p
    n0=$(prop NRestarts); pid0=$(prop MainPID)
    id=$(as_alice submit demo '{"seconds": 5}') || return 1
    wait_in 20 "steward job $id --json | grep -q '\"state\": \"running\"'" || return 1
    olds=$(worker_pids)
    ctr kill -9 "$pid0"
    wait_in 30 "[ \$(systemctl show -P NRestarts steward) -eq $((n0 + 1)) ] && [ \$(systemctl show -P SubState steward) = running ]" ||
        { say "not restarted after kill -9"; return 1; }
    for p in $olds; do
        if ctr test -d "/proc/$p" && ! ctr grep -q '^State:.*Z' "/proc/$p/status"; then say "orphan worker $p"; return 1; fi
    done
    wait_in 60 "steward job $id --json | grep -q '\"state\": \"succeeded\"'" || return 1
    as_alice job "$id" --json | grep -q '"outcome": "interrupted"'
}
check "6. kill -9 of the main PID: restarted, no orphan workers, job reclaimed" step6

# ----------------------------------------------------------- 7. broken reload
step7() {
    wait_in 30 "steward status --json | grep -c '\"state\": \"running\"' | grep -qx 3" || return 1
    local pid0 w0 out
    pid0=$(prop MainPID); w0=$(worker_pids)
    ctr cp $CONF /root/steward.toml.good
    printf '\n[pool.broken]\ninstances = "many"\n' | ctr sh -c "cat >> $CONF"
    if out=$(ctr systemctl reload steward.service 2>&1); then say "reload of a broken file succeeded"; return 1; fi
    say "systemctl reload said: $out"
    [[ "$(prop ActiveState)" == active && "$(prop MainPID)" == "$pid0" && "$(worker_pids)" == "$w0" ]] ||
        { say "service changed after a broken reload"; return 1; }
    journal_has "steward.toml:[0-9]*:[0-9]*: .*instances" ||
        { say "no positioned error in the journal"; return 1; }
    # The daemon itself knows the attempt failed: its status line says so.
    [[ "$(prop StatusText)" == "reload failed"* ]] ||
        { say "STATUS= after a broken reload: $(prop StatusText)"; return 1; }
    ctr cp /root/steward.toml.good $CONF
    ctr systemctl reload steward.service || return 1
    [[ "$(prop StatusText)" != "reload failed"* ]] ||
        { say "STATUS= still says the reload failed: $(prop StatusText)"; return 1; }
}
check "7. broken config: reload fails visibly, service stays active on the old config" step7

# ------------------------------------------------------------------- 8. stop
step8() {
    local a b t0 took
    a=$(as_alice submit demo '{"seconds": 3}') && b=$(as_alice submit demo '{"seconds": 3}') || return 1
    wait_in 20 "steward job $a --json | grep -q '\"state\": \"running\"' && steward job $b --json | grep -q '\"state\": \"running\"'" || return 1
    t0=$SECONDS
    ctr -t 120 systemctl stop steward.service || return 1
    took=$((SECONDS - t0))
    say "systemctl stop took ${took}s; Result=$(prop Result) ActiveState=$(prop ActiveState)"
    [[ "$(prop ActiveState)" == inactive && "$(prop Result)" == success && $took -lt 90 ]] || return 1
    # Nothing left behind: no process in the unit's cgroup or below.
    local left; left=$(ctr sh -c "find $UNIT_CG -name cgroup.procs -exec cat {} + 2>/dev/null" || true)
    [[ -z "$left" ]] || { say "processes left in the unit's cgroups after stop: $left"; return 1; }
    ctr -t 60 systemctl start steward.service || return 1
    [[ "$(job_state "$a")" == succeeded && "$(job_state "$b")" == succeeded ]] || { say "jobs were not drained"; return 1; }
}
check "8. systemctl stop with jobs running: drained, inactive (dead), Result=success" step8

# ------------------------------------------- 8b. stop with an escaped grandchild
step8b() {
    ctr cp $CONF /root/steward.toml.before-escape
    printf '%s' "$ESCAPE_POOL" | ctr sh -c "cat >> $CONF"
    ctr systemctl reload steward.service || return 1
    wait_in 30 "pgrep -f '^sleep 4242\$' >/dev/null" || { say "escape pool not up"; return 1; }
    local since; since=$(ctr date '+%Y-%m-%d %H:%M:%S')
    ctr -t 120 systemctl stop steward.service || return 1
    ! ctr pgrep -f '^sleep 4242$' >/dev/null || { say "the escaped grandchild outlived the stop"; return 1; }
    # steward killed it itself: systemd found nothing left to kill after steward exited.
    local j; j=$(journal --since "$since")
    ! grep -q "Killing process .* with signal SIGKILL" <<<"$j" || { say "systemd had to kill leftovers: $(grep 'Killing process' <<<"$j")"; return 1; }
    ctr cp /root/steward.toml.before-escape $CONF
    ctr -t 60 systemctl start steward.service
}
check "8b. systemctl stop with a grandchild that left its worker's process group: steward kills it, systemd finds nothing left" step8b

# ---------------------------------------------------------------- 9. upgrade
step9() {
    local pid0; pid0=$(prop MainPID)
    ctr sed -i '1i # edited by the admin' $CONF
    ctr -t 300 sh -c 'cd /mnt/artifacts && apt-get install -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold ./new.deb' >>"$LOG" 2>&1 || return 1
    ctr head -1 $CONF | grep -q "edited by the admin" || { say "the admin's conffile was replaced"; return 1; }
    ctr grep -q '\[pool.python\]' $CONF || return 1
    say "installed version: $(ctr dpkg-query -W -f '${Version}' steward)"
    [[ "$(ctr dpkg-query -W -f '${Version}' steward)" == "$(dpkg-deb -f "$NEW_DEB" Version)" ]] || return 1
    [[ "$(prop ActiveState)" == active && "$(prop MainPID)" != "$pid0" ]] || { say "not restarted by the upgrade"; return 1; }
    wait_in 30 "[ \$(steward jobs --state succeeded --limit 500 --json | grep -c '\"state\": \"succeeded\"') -ge 104 ]"
}
check "9. upgrade over an edited conffile (confold): file kept, service restarted, jobs preserved" step9

# ----------------------------------------------------------- 10. remove, purge
step10() {
    ctr -t 120 apt-get remove -y -q steward >>"$LOG" 2>&1 || return 1
    ctr test -f $CONF && ctr test -f /var/lib/steward/journal.db || { say "remove deleted config or state"; return 1; }
    [[ "$(ctr systemctl is-active steward.service)" != active ]] || return 1
    ctr -t 120 apt-get purge -y -q steward >>"$LOG" 2>&1 || return 1
    ! ctr test -e /etc/steward && ! ctr test -e /var/lib/steward || { say "purge left /etc/steward or /var/lib/steward"; return 1; }
}
check "10. remove keeps /etc/steward and /var/lib/steward; purge removes both" step10

ctr journalctl -b --no-pager >"$RUN/journal.txt" 2>&1 || true
ctr -t 30 systemctl poweroff >/dev/null 2>&1 || true
for _ in $(seq 150); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.2; done
say "end-to-end under systemd: $PASSED passed, $FAILED failed (logs: $RUN)"
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
