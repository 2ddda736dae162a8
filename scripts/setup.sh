#!/usr/bin/env bash
# Installs what Strata's tests use: filesystem tools, CLIs the tests compare
# against or drive (zstd, b3sum, tar, rclone), the S3 test server (versitygw),
# the NATS CLI, chromium (the status page test), systemd-analyze and setpriv
# (the unit tests). Idempotent; quiet when everything is there.
set -euo pipefail

need_pkgs=()
for pair in mkfs.xfs:xfsprogs mkfs.ext4:e2fsprogs b3sum:b3sum rclone:rclone zstd:zstd tar:tar getfattr:attr mt:mt-st du:coreutils zsh:zsh fish:fish systemd-analyze:systemd setpriv:util-linux chromium:chromium man:man-db dpkg-deb:dpkg; do
  cmd=${pair%%:*} pkg=${pair##*:}
  command -v "$cmd" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Another apt (a helper, unattended-upgrades) may hold the lock: wait.
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need_pkgs[@]}" >/dev/null
  else
    echo "setup: not root or no apt-get; missing ${need_pkgs[*]} (tests needing them will skip)"
  fi
fi

gobin=$(go env GOBIN); [ -n "$gobin" ] || gobin="$(go env GOPATH)/bin"
[ -x "$gobin/versitygw" ] || command -v versitygw >/dev/null 2>&1 || {
  echo "setup: go install versitygw (S3 test server)"
  go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
}
[ -x "$gobin/nats" ] || command -v nats >/dev/null 2>&1 || {
  echo "setup: go install natscli"
  go install github.com/nats-io/natscli/nats@v0.5.0
}

# The DuckDB CLI, for the restore without Strata (docs/EXIT.md). Debian has
# no duckdb package, and the Python index (where the `duckdb-cli` wheel
# lives) is not reachable from these machines; npm serves DuckDB's own
# engine (@duckdb/node-api with libduckdb), so a small `duckdb -c SQL`
# stand-in on it is installed as /usr/local/bin/duckdb when no duckdb is on
# the PATH. A real duckdb CLI, where present, is used instead.
src="$(dirname "$0")/duckdb-cli"
lib=/usr/local/lib/strata-duckdb-cli
if ! command -v duckdb >/dev/null 2>&1 || { [ -f "$lib/duckdb.mjs" ] && ! cmp -s "$src/duckdb.mjs" "$lib/duckdb.mjs"; }; then
  if [ "$(id -u)" = 0 ] && command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1; then
    echo "setup: installing the duckdb CLI stand-in (scripts/duckdb-cli, DuckDB from npm)"
    mkdir -p "$lib"
    cp "$src/package.json" "$src/package-lock.json" "$src/duckdb.mjs" "$lib/"
    (cd "$lib" && npm ci --no-audit --no-fund --omit=dev --loglevel=error >/dev/null)
    printf '#!/bin/sh\nexec node %s/duckdb.mjs "$@"\n' "$lib" > /usr/local/bin/duckdb
    chmod 755 /usr/local/bin/duckdb
  else
    echo "setup: no duckdb and no root/npm/node to install the stand-in (the restore-without-strata test will skip)"
  fi
fi
