#!/usr/bin/env bash
# restore-without-strata.sh — get every archived file back with standard
# tools only, from Strata's Parquet export and its cold tiers. No Strata code
# runs: duckdb (the CLI), zstd, b3sum, tar, rclone, mt and dd, plus bash,
# coreutils, od and awk. See docs/EXIT.md for the formats and the reasoning.
#
#   restore-without-strata.sh EXPORT_DIR DEST [TIER=SOURCE]...
#
# EXPORT_DIR holds files.parquet and copies.parquet (`strata export
# --parquet EXPORT_DIR`). Every current version of every file that is not
# deleted is written to DEST followed by its original absolute path
# (/srv/hot/a/b → DEST/srv/hot/a/b), with its mode, owner (when run as
# root) and modification time, and checked: the .zst against the copy's
# packed_sum, the restored bytes against the object id (both BLAKE3, with
# b3sum). A copy that fails either check is set aside and the next source
# is tried.
#
# Each TIER=SOURCE says where the copies of the tier named TIER (the `tier`
# column of copies.parquet) are now; sources are tried in the order given:
#
#   TIER=dir:/mnt/cold            a directory tier's root (objects/<aa>/<id>.zst below it)
#   TIER=rclone:REMOTE:           an S3 tier through an rclone remote of type s3:
#                                 s3://BUCKET/KEY in `location` is read as REMOTE:BUCKET/KEY
#   TIER=rclone:REMOTE:PATH       an S3 or rclone tier whose root is REMOTE:PATH
#                                 (objects/<aa>/<id>.zst below it)
#   TIER=tape:/dev/nst0           an LTO drive (st driver) with the tier's cartridges;
#                                 the script asks for each volume it needs in turn
#   TIER=tape-image:/srv/tapes    the on-disk image of Strata's tape emulator: one
#                                 directory per cartridge, named by volume (barcode)
#
# With no TIER=SOURCE at all, directory tiers are read where `location`
# says. Exit status: 0 when every file was restored and verified, 1 when
# any was not (each is named on stderr), 2 on a usage error.
#
# Environment: DUCKDB (default duckdb), RCLONE (default rclone), TAPE_WAIT
# (for tape:, a command run to have the operator load a volume; default:
# prompt on the terminal), RESTORE_WORK (scratch directory, default a new
# one under TMPDIR; tape objects are extracted there before decompression).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 2 ] || usage
export_dir=$1 dest=$2
shift 2
DUCKDB=${DUCKDB:-duckdb}
RCLONE=${RCLONE:-rclone}
for f in files.parquet copies.parquet; do
  [ -f "$export_dir/$f" ] || { echo "restore: $export_dir/$f: no such file (strata export --parquet $export_dir)" >&2; exit 2; }
done

src_tier=() src_kind=() src_arg=()
for s in "$@"; do
  tier=${s%%=*} spec=${s#*=}
  kind=${spec%%:*} arg=${spec#*:}
  [ "$tier" != "$s" ] && [ "$kind" != "$spec" ] && [ -n "$tier" ] && [ -n "$arg" ] || { echo "restore: bad source '$s' (want TIER=dir:PATH, TIER=rclone:REMOTE:[PATH], TIER=tape:DEVICE or TIER=tape-image:DIR)" >&2; exit 2; }
  case $kind in dir|rclone|tape|tape-image) ;; *) echo "restore: bad source kind '$kind' in '$s'" >&2; exit 2 ;; esac
  src_tier+=("$tier") src_kind+=("$kind") src_arg+=("$arg")
done

work=${RESTORE_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/restore-without-strata.XXXXXX")}
mkdir -p "$work" "$dest"
export_abs=$(cd "$export_dir" && pwd)
# Paths inside SQL string literals: a quote doubled.
sql_export=${export_abs//\'/\'\'} sql_work=${work//\'/\'\'}

# ---- 1. The plan, from the Parquet export (duckdb) ----
# One line per current version to restore; the path in hex, so that any
# byte but NUL survives the trip through a tab-separated file. And one line
# per good copy of those objects (no empty field: read with IFS=tab would
# merge two tabs).
"$DUCKDB" -c "
COPY (
  SELECT hex(path) AS path, object_id, size, mode & 4095 AS perm, uid, gid,
         epoch_ns(mtime) AS mtime_ns, state
  FROM '$sql_export/files.parquet'
  WHERE current AND state <> 'deleted' AND object_id IS NOT NULL
  ORDER BY path
) TO '$sql_work/files.tsv' (HEADER false, DELIMITER '\t');
COPY (
  SELECT DISTINCT c.object_id, c.tier, c.tier_kind, c.location, c.packed_sum,
         coalesce(c.tape_volume, '-'), coalesce(c.tape_file, -1)
  FROM '$sql_export/copies.parquet' c
  WHERE c.state = 'good'
    AND c.object_id IN (SELECT object_id FROM '$sql_export/files.parquet' WHERE current AND state <> 'deleted')
  ORDER BY c.tape_volume, c.tape_file, c.object_id
) TO '$sql_work/copies.tsv' (HEADER false, DELIMITER '\t');
COPY (
  SELECT count(*) FROM '$sql_export/files.parquet'
  WHERE current AND state <> 'deleted' AND object_id IS NULL
) TO '$sql_work/unarchived.tsv' (HEADER false);
"

declare -A copy_loc copy_sum copy_vol copy_file copy_kind
while IFS=$'\t' read -r oid tier kind loc psum vol tfile; do
  copy_loc[$oid/$tier]=$loc copy_sum[$oid/$tier]=$psum copy_kind[$oid/$tier]=$kind
  copy_vol[$oid/$tier]=$vol copy_file[$oid/$tier]=$tfile
done < "$work/copies.tsv"

# With no source named, every directory tier where its location says.
if [ ${#src_tier[@]} -eq 0 ]; then
  while IFS= read -r t; do src_tier+=("$t") src_kind+=(recorded) src_arg+=(""); done < <(
    awk -F'\t' '$3 == "directory" && !seen[$2]++ { print $2 }' "$work/copies.tsv")
fi

# ---- 2. Tapes ----
# A tape is read the way dd reads a drive: tape file N is every block
# between filemark N and filemark N+1; `mt fsf N` skips N filemarks. Each
# tape file Strata wrote is one pax tar (file 0 the label, VOLUME.json).
#
# The emulator's image of a cartridge is two files: `data`, every block's
# bytes back to back, and `index`, one 16-byte record per block or
# filemark (int64 little endian offset into data, int64 length; length -1
# is a filemark, its offset that of the next block). So tape file N is the
# byte range of `data` from the first block after the N-th filemark to the
# (N+1)-th filemark: read with od + awk (the fsf) and dd (the read).

# image_range CART N: "start length" of tape file N in CART/data.
image_range() {
  od -An -v -t d8 -w16 "$1/index" | awk -v n="$2" '
    { off = $1; len = $2
      if (len < 0) { if (f == n) { print (s == "" ? off : s), off - (s == "" ? off : s); done = 1; exit }
                     f++; s = ""; next }
      if (f == n && s == "") s = off
      end = off + len }
    END { if (!done && f == n && s != "") print s, end - s }'
}

# image_cartridge LIB VOLUME: the cartridge directory of VOLUME.
image_cartridge() {
  if [ -f "$1/$2/index" ]; then echo "$1/$2"; elif [ -f "$1/index" ]; then echo "$1"; else return 1; fi
}

declare -A tape_bs   # block size by "source index/volume", from the label
declare -A tape_done # tape files already extracted: "i/volume/file"

# tape_read I VOLUME FILE: tape file FILE of VOLUME from source I, on stdout.
tape_read() {
  local i=$1 vol=$2 n=$3 arg=${src_arg[$1]} bs=${tape_bs[$1/$2]:-1048576}
  if [ "${src_kind[$i]}" = tape-image ]; then
    local cart range start len
    cart=$(image_cartridge "$arg" "$vol") || { echo "restore: no cartridge $vol under $arg" >&2; return 1; }
    range=$(image_range "$cart" "$n")
    [ -n "$range" ] || { echo "restore: $cart has no tape file $n" >&2; return 1; }
    read -r start len <<<"$range"
    dd if="$cart/data" iflag=skip_bytes,count_bytes skip="$start" count="$len" bs="$bs" status=none
  else
    # Variable block mode: each read() returns one block as written.
    mt -f "$arg" setblk 0
    mt -f "$arg" rewind
    [ "$n" -eq 0 ] || mt -f "$arg" fsf "$n"
    dd if="$arg" bs="$bs" status=none
  fi
}

# tape_volume I VOLUME: make sure VOLUME is what source I reads, and learn
# its block size from its label (tape file 0).
tape_volume() {
  local i=$1 vol=$2 label bs
  [ -z "${tape_bs[$i/$vol]:-}" ] || return 0
  if [ "${src_kind[$i]}" = tape ]; then
    while :; do
      label=$(tape_read "$i" "$vol" 0 | tar -xO -B -i -f - VOLUME.json 2>/dev/null) || label=
      grep -q "\"volume\": *\"$vol\"" <<<"$label" && break
      if [ -n "${TAPE_WAIT:-}" ]; then "$TAPE_WAIT" "$vol" "${src_arg[$i]}"
      else read -r -p "restore: load volume $vol in ${src_arg[$i]} and press Enter " _ </dev/tty; fi
    done
  else
    label=$(tape_read "$i" "$vol" 0 | tar -xO -B -i -f - VOLUME.json) || { echo "restore: volume $vol: cannot read its label" >&2; return 1; }
    grep -q "\"volume\": *\"$vol\"" <<<"$label" || { echo "restore: cartridge for $vol is labelled otherwise: $label" >&2; return 1; }
  fi
  bs=$(sed -n 's/.*"block_size": *\([0-9]*\).*/\1/p' <<<"$label")
  [ -n "$bs" ] || { echo "restore: volume $vol: no block size in its label" >&2; return 1; }
  tape_bs[$i/$vol]=$bs
}

# tape_extract I VOLUME FILE: extract every needed object of that tape
# file into the scratch directory, once.
tape_extract() {
  local i=$1 vol=$2 n=$3 out="$work/tape/$1/$2/$3" members=()
  [ -z "${tape_done[$i/$vol/$n]:-}" ] || return 0
  tape_done[$i/$vol/$n]=1
  tape_volume "$i" "$vol" || return 1
  while IFS=$'\t' read -r oid tier kind loc psum v f; do
    [ "$tier" = "${src_tier[$i]}" ] && [ "$v" = "$vol" ] && [ "$f" = "$n" ] && members+=("objects/${oid:0:2}/$oid.zst")
  done < "$work/copies.tsv"
  mkdir -p "$out"
  echo "restore: reading tape file $n of $vol (${#members[@]} objects) from ${src_arg[$i]}" >&2
  # -b: the tar blocking factor is the tape block size; -B: whole blocks
  # from a pipe; -i: read on past the end-of-archive blocks to the
  # filemark (the padding of the last block), so that dd is never cut off
  # with SIGPIPE. A member missing from the bundle is only reported here;
  # the object is then taken from the next source.
  tape_read "$i" "$vol" "$n" | tar -x -B -i -b $((tape_bs[$i/$vol] / 512)) -f - -C "$out" "${members[@]}" ||
    echo "restore: tape file $n of $vol: tar reported errors (objects it did not give are tried elsewhere)" >&2
}

# ---- 3. Fetch, check, decompress, check, place ----

# fetch I OID OUT: the packed object from source I into OUT.
fetch() {
  local i=$1 oid=$2 out=$3 key="$2/${src_tier[$1]}" arg=${src_arg[$1]}
  local loc=${copy_loc[$key]} rel="objects/${oid:0:2}/$oid.zst"
  case ${src_kind[$i]} in
    recorded) cp -- "$loc" "$out" ;;
    dir) cp -- "$arg/$rel" "$out" ;;
    rclone)
      local remote="${arg%/}/$rel" try
      if [[ $arg == *: && $loc == s3://* ]]; then remote="$arg${loc#s3://}"
      elif [[ $arg == *: ]]; then remote="$arg$rel"; fi
      # A remote may fail for a moment: three tries.
      for try in 1 2 3; do
        "$RCLONE" cat "$remote" > "$out" && return 0
        [ "$try" = 3 ] || sleep "$try"
      done
      return 1 ;;
    tape|tape-image)
      tape_extract "$i" "${copy_vol[$key]}" "${copy_file[$key]}" || return 1
      mv -- "$work/tape/$i/${copy_vol[$key]}/${copy_file[$key]}/$rel" "$out" ;;
  esac
}

# Read tapes in tape order first (copies.tsv is sorted by volume and tape
# file), for objects whose first source is a tape: a drive then moves
# forward, one pass per volume.
declare -A first_src
while IFS=$'\t' read -r hexpath oid rest; do
  for i in "${!src_tier[@]}"; do
    if [ -n "${copy_loc[$oid/${src_tier[$i]}]:-}" ]; then first_src[$oid]=$i; break; fi
  done
done < "$work/files.tsv"
while IFS=$'\t' read -r oid tier kind loc psum vol tfile; do
  i=${first_src[$oid]:-}
  [ -n "$i" ] && [ "${src_tier[$i]}" = "$tier" ] || continue
  case ${src_kind[$i]} in tape|tape-image) tape_extract "$i" "$vol" "$tfile" || true ;; esac
done < "$work/copies.tsv"

restored=0 failed=0 dirty=0
declare -A done_obj # object id → a path already restored with that content
while IFS=$'\t' read -r hexpath oid size perm uid gid mtime_ns state; do
  printf -v path '%b' "$(sed 's/../\\x&/g' <<<"$hexpath")"
  target="$dest$path"
  mkdir -p -- "${target%/*}"
  tmp="$target.restore-tmp"
  ok=
  if [ -n "${done_obj[$oid]:-}" ]; then
    cp -- "${done_obj[$oid]}" "$tmp" && ok=1
  fi
  for i in "${!src_tier[@]}"; do
    [ -z "$ok" ] || break
    key="$oid/${src_tier[$i]}"
    [ -n "${copy_loc[$key]:-}" ] || continue
    zst="$work/obj.zst"
    rm -f -- "$zst"
    if ! fetch "$i" "$oid" "$zst" 2>"$work/err"; then
      echo "restore: $path: tier ${src_tier[$i]}: $(tail -n 1 "$work/err")" >&2; continue
    fi
    if [ "$(b3sum --no-names -- "$zst")" != "${copy_sum[$key]}" ]; then
      echo "restore: $path: tier ${src_tier[$i]}: the packed object does not match its packed_sum (BLAKE3): corrupt copy" >&2; continue
    fi
    if ! zstd -q -d -c -- "$zst" > "$tmp"; then
      echo "restore: $path: tier ${src_tier[$i]}: zstd could not decompress the object" >&2; continue
    fi
    # --no-names: a path with a newline cannot break a check line.
    if [ "$(b3sum --no-names -- "$tmp")" != "$oid" ]; then
      echo "restore: $path: tier ${src_tier[$i]}: restored bytes do not hash to the object id" >&2; continue
    fi
    ok=1
  done
  if [ -z "$ok" ]; then
    rm -f -- "$tmp"
    echo "restore: FAILED $path: no source gave verified bytes" >&2
    failed=$((failed + 1))
    continue
  fi
  [ "$(stat -c %s -- "$tmp")" = "$size" ] || { echo "restore: FAILED $path: $(stat -c %s -- "$tmp") bytes, the export says $size" >&2; rm -f -- "$tmp"; failed=$((failed + 1)); continue; }
  # chown first: it clears set-user/group-id bits that chmod then sets.
  [ "$(id -u)" != 0 ] || chown "$uid:$gid" -- "$tmp"
  chmod "$(printf '%o' "$perm")" -- "$tmp"
  touch -m -d "@$((mtime_ns / 1000000000)).$(printf '%09d' $((mtime_ns % 1000000000)))" -- "$tmp"
  mv -f -- "$tmp" "$target"
  done_obj[$oid]=$target
  restored=$((restored + 1))
  [ "$state" != dirty ] || { dirty=$((dirty + 1)); echo "restore: note: $path was modified after it was archived: restored as archived" >&2; }
done < "$work/files.tsv"

unarchived=$(cat "$work/unarchived.tsv")
[ -n "${RESTORE_WORK:-}" ] || rm -rf -- "$work"
note=
[ "$dirty" -eq 0 ] || note=", $dirty of them as archived though modified since"
echo "restore: $restored files restored and verified into $dest$note, $failed failed; $unarchived files were never archived (not on any tier)"
[ "$failed" -eq 0 ]
