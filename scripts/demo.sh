#!/usr/bin/env bash
# A guided tour: a loop-mounted ext4 hot tree, a directory cold tier, a few
# files archived to stubs and read back by ordinary programs. Needs root.
# Everything lives under a temporary directory that is removed at the end.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "demo: run as root (loop mount, fanotify)"; exit 1; }
cd "$(dirname "$0")/.."
go build -o bin/strata ./cmd/strata
S=$PWD/bin/strata
T=$(mktemp -d /tmp/strata-demo.XXXXXX)
HOT=$T/hot DATA=$T/data COLD=$T/cold
cleanup() {
  [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
  umount "$HOT" 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT
mkdir -p "$HOT" "$COLD"
truncate -s 512M "$T/hot.img" && mkfs.ext4 -q -F "$T/hot.img" && mount -o loop "$T/hot.img" "$HOT"
head -c 64M /dev/urandom > "$HOT/random.bin"
for i in $(seq 1 200000); do echo "line $i of a very compressible text file"; done > "$HOT/text.txt"
sha256sum "$HOT"/*.* > "$T/before.sha256"
echo "== hot tree before:"; du -sh "$HOT"

"$S" run --data "$DATA" --hot "$HOT" --cold "$COLD" --port 4251 2> "$T/daemon.log" &
PID=$!
for _ in $(seq 100); do "$S" status --data "$DATA" >/dev/null 2>&1 && break; sleep 0.1; done
echo "== strata archive --wait"
"$S" archive --wait --data "$DATA" "$HOT"
echo "== after release (same sizes, no blocks):"; ls -l "$HOT"; du -sh "$HOT"
"$S" ls --data "$DATA" "$HOT"
echo "== reading the stubs with sha256sum (the kernel holds it while Strata recalls):"
sha256sum -c "$T/before.sha256"
"$S" ls --data "$DATA" "$HOT"
echo "== the event log:"; "$S" events --data "$DATA" | tail -n 12
"$S" status --data "$DATA"
