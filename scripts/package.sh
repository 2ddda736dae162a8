#!/usr/bin/env bash
# Builds the Debian package of Strata into dist/deb/out/ (run by
# `go tool task package`): the binary (with its version), the systemd units
# (dist/systemd, pointed at /usr/bin/strata), the example configuration,
# man pages and bash/zsh/fish completions generated from the binary's own
# command-line definition, and the docs. Prints the package's path.
#   VERSION  the package version (default: from git: 0.0.0~gitYYYYMMDD.HASH,
#            or a v-tag's number)
#   OUT      where the .deb goes (default dist/deb/out)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${VERSION:-}" ]; then
  if tag=$(git describe --tags --exact-match --match 'v[0-9]*' 2>/dev/null); then
    VERSION=${tag#v}
  else
    VERSION="0.0.0~git$(git log -1 --format=%cd --date=format:%Y%m%d 2>/dev/null || date -u +%Y%m%d).$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
    git diff --quiet HEAD 2>/dev/null || VERSION="$VERSION.dirty"
  fi
fi
ARCH=$(go env GOARCH)
OUT=${OUT:-dist/deb/out}
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
export VERSION ARCH BUILD

go build -trimpath -ldflags "-s -w -X main.version=$VERSION" -o "$BUILD/strata" ./cmd/strata

mkdir -p "$BUILD/systemd" "$BUILD/man" "$BUILD/completion"
for unit in dist/systemd/*.service; do
  sed 's#/usr/local/bin/strata#/usr/bin/strata#g' "$unit" > "$BUILD/systemd/$(basename "$unit")"
done
"$BUILD/strata" manpages --dir "$BUILD/man" --date "$(git log -1 --format=%cd --date=format:%Y-%m-%d 2>/dev/null || date -u +%F)" >/dev/null
gzip -9n "$BUILD"/man/*.1
"$BUILD/strata" completion bash > "$BUILD/completion/strata.bash"
"$BUILD/strata" completion zsh > "$BUILD/completion/_strata"
"$BUILD/strata" completion fish > "$BUILD/completion/strata.fish"

cp strata.example.toml README.md docs/OPERATIONS.md dist/deb/copyright dist/deb/postinst dist/deb/prerm dist/deb/postrm "$BUILD/"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
deb="$OUT/strata_${VERSION}_${ARCH}.deb"
rm -f "$deb"
# nfpm (a tool dependency in go.mod) reads every src relative to its
# working directory: the build one.
go build -o "$BUILD/.nfpm" github.com/goreleaser/nfpm/v2/cmd/nfpm
conf="$PWD/dist/deb/nfpm.yaml"
(cd "$BUILD" && ./.nfpm package --config "$conf" --packager deb --target "$deb" >&2)
echo "$deb"
