#!/usr/bin/env bash
# Fuzzes every `func FuzzXxx` in the module's tests for the given time each
# (default 60s), one after the other: go test -fuzz takes one target at a
# time. A failure stops the run; the failing input is written by go test to
# the package's testdata/fuzz/FuzzXxx/ (commit it with the fix: it becomes a
# regression seed that every plain `go test` runs).
#
#   scripts/fuzz.sh 10s            # every target, 10 s each (CI)
#   scripts/fuzz.sh 10m FuzzReader # only targets matching a regexp
set -euo pipefail
cd "$(dirname "$0")/.."
time=${1:-60s}
only=${2:-.}
# Minimising a new input may take up to 60 s by default, during which the
# fuzzer runs nothing new: keep it short so that brief runs fuzz.
minimize=${FUZZ_MINIMIZE_TIME:-5s}

targets=()
while IFS= read -r line; do
  file=${line%%:*}
  name=$(sed -E 's/^func (Fuzz[A-Za-z0-9_]*)\(.*/\1/' <<<"${line#*:}")
  [[ $name =~ $only ]] || continue
  targets+=("./$(dirname "${file#./}") $name")
done < <(grep -rE --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' . | grep -v '/testdata/' | sort)

if [ ${#targets[@]} -eq 0 ]; then
  echo "fuzz: no target matches $only" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, $time each"
for t in "${targets[@]}"; do
  read -r pkg name <<<"$t"
  echo "fuzz: $pkg $name"
  # grep hides the progress lines; the status is go test's.
  set +e
  go test -run '^$' -fuzz "^${name}\$" -fuzztime "$time" -fuzzminimizetime "$minimize" "$pkg" 2>&1 |
    grep -vE '^fuzz: elapsed: '
  status=${PIPESTATUS[0]}
  set -e
  [ "$status" -eq 0 ] || { echo "fuzz: $name in $pkg failed (input under $pkg/testdata/fuzz/$name/)" >&2; exit 1; }
done
echo "fuzz: every target ran $time with no failure"
