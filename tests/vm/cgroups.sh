#!/usr/bin/env bash
# Resource limits under a real kernel.
#
# The systemd container of tests/e2e delegates cgroups but has no resource controllers,
# so what needs the kernel to enforce a limit runs here: a QEMU VM (pure emulation) that
# boots Debian's cloud kernel with the e2e test's root file system, installs the .deb
# and runs tests/vm/inside.sh as root: memory_max enforced and the OOM kill named,
# pids_max, recycle_above, a job quarantined after 3 OOM kills, and the cost of
# cgroups for exec jobs.
#
# Usage (as root, after tests/e2e/systemd.sh has made its root file system):
#   tests/vm/cgroups.sh steward.deb
# Environment: VM_HARNESS (default ../shared/vm-harness beside the repository),
#   STEWARD_VM_DIR (image cache, default /var/tmp/steward-vm), VM_ROOTFS.
set -Eeuo pipefail

DEB=$(readlink -f "${1:?usage: cgroups.sh steward.deb}")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HARNESS=$(readlink -f "${VM_HARNESS:-$HERE/../../../shared/vm-harness}")
WORK=${STEWARD_VM_DIR:-/var/tmp/steward-vm}
export VM_DIR=$WORK/vm VM_RUNS=$WORK/runs
[[ $EUID -eq 0 ]] || { echo "the VM test must run as root" >&2; exit 2; }
[[ -x $HARNESS/vm-run.sh ]] || { echo "no VM harness at $HARNESS (set VM_HARNESS)" >&2; exit 2; }
ROOTFS=${VM_ROOTFS:-$(ls -d /var/tmp/steward-e2e/rootfs-bookworm-* 2>/dev/null | head -1)}
[[ -d $ROOTFS ]] || { echo "no root file system: run tests/e2e/systemd.sh first (or set VM_ROOTFS)" >&2; exit 2; }

# The image is made once per root file system.
if [[ ! -f $VM_DIR/root.img || "$(cat "$VM_DIR/rootfs" 2>/dev/null)" != "$ROOTFS" ]]; then
    SRC_ROOTFS=$ROOTFS "$HARNESS/vm-build.sh"
    echo "$ROOTFS" >"$VM_DIR/rootfs"
fi

ART=$(mktemp -d /var/tmp/steward-vm-art.XXXXXX)
trap 'rm -rf "$ART"' EXIT
cp "$DEB" "$ART/steward.deb"
cp "$HERE/inside.sh" "$ART/"
printf '#!/bin/sh\nexec bash /mnt/artifacts/inside.sh\n' >"$ART/run.sh"

rc=0
VM_TIMEOUT=${VM_TIMEOUT:-290} RUN_TIMEOUT=${RUN_TIMEOUT:-250} "$HARNESS/vm-run.sh" "$ART" || rc=$?
R=$(ls -d "$VM_RUNS"/vm-* | tail -1)
echo "----- inside the VM ($R/results)"
cat "$R/results/run.log" 2>/dev/null || echo "(no results: see $R/console.log)"
exit "$rc"
