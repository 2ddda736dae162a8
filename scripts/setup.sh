#!/usr/bin/env bash
# Installs what Strata's tests use: filesystem tools, CLIs the tests compare
# against or drive (zstd, b3sum, tar, rclone), the S3 test server (versitygw)
# and the NATS CLI. Idempotent; quiet when everything is there.
set -euo pipefail

need_pkgs=()
for pair in mkfs.xfs:xfsprogs mkfs.ext4:e2fsprogs b3sum:b3sum rclone:rclone zstd:zstd tar:tar getfattr:attr mt:mt-st du:coreutils zsh:zsh fish:fish systemd-analyze:systemd man:man-db dpkg-deb:dpkg; do
  cmd=${pair%%:*} pkg=${pair##*:}
  command -v "$cmd" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
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
