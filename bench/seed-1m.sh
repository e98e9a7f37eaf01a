#!/usr/bin/env bash
# Seeding benchmark: times `tenfold seed --products 1000000` into a fresh SQLite file. Target: <= 60 s.
#
#   bash bench/seed-1m.sh
#   PRODUCTS=100000 bash bench/seed-1m.sh     # smaller run (the target only applies to 1,000,000)
#
# Bounded by TIMEOUT (default 600 s). STRICT=1 makes the script exit 2 when the target is missed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PRODUCTS="${PRODUCTS:-1000000}"
TIMEOUT="${TIMEOUT:-600}"
MAX_SECONDS=60

bench_mktemp
work="$BENCH_TMP"
bin="$(bench_copy_binary "$work")"
db="$work/tenfold.db"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="$RESULTS_DIR/seed-1m-$stamp"
mkdir -p "$out"

{
    echo "date:   $(date -u)"
    echo "nproc:  $(nproc)"
    echo "cpu:    $(lscpu 2>/dev/null | awk -F: '/Model name/ { gsub(/^[ \t]+/, "", $2); print $2; exit }')"
    echo "memory: $(free -g | awk '/^Mem:/ { print $2 " GiB total, " $7 " GiB available" }')"
    echo "disk:   $(df -h --output=fstype,size,avail "$work" | tail -n1 | awk '{ print $1 ", " $2 " size, " $3 " free" }') ($work)"
    echo "binary: $(sha256sum "$bin" | cut -c1-16)"
} | tee "$out/machine.txt" >&2

bench_log "seeding $PRODUCTS products into a fresh $db (timeout ${TIMEOUT}s)"
t0="$(date +%s.%N)"
set +e
# Run under `timeout` so the run is bounded; `timeout` is our child, so the EXIT trap need not track it.
/usr/bin/time -v -o "$out/time-v.txt" \
    timeout --foreground --kill-after=5 "$TIMEOUT" "$bin" seed --products "$PRODUCTS" --database-url "sqlite://$db" \
    >"$out/seed.txt" 2>"$out/seed.stderr"
rc=$?
set -e
t1="$(date +%s.%N)"
[[ "$rc" == 0 ]] || { cat "$out/seed.stderr" >&2; bench_die "seed failed or timed out (exit $rc)"; }

elapsed="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')"
maxrss_kib="$(awk -F: '/Maximum resident set size/ { gsub(/ /, "", $2); print $2 }' "$out/time-v.txt")"
cpu_user="$(awk -F: '/User time/ { gsub(/ /, "", $2); print $2 }' "$out/time-v.txt")"
cpu_sys="$(awk -F: '/System time/ { gsub(/ /, "", $2); print $2 }' "$out/time-v.txt")"
size_mib="$(du -cm "$db"* | awk 'END { print $1 }')"
count="$(awk '{ for (i = 1; i <= NF; i++) if ($i == "has") print $(i + 1) }' "$out/seed.txt")"
# Count independently of tenfold when the sqlite3 shell is installed.
if command -v sqlite3 >/dev/null 2>&1; then
    count="$count (sqlite3 counts $(timeout 60 sqlite3 -readonly "$db" 'SELECT count(*) FROM products;'))"
fi
verdict="$(awk -v v="$elapsed" -v l="$MAX_SECONDS" 'BEGIN { print (v <= l) ? "met" : "MISSED" }')"

{
    echo
    echo "== seed summary ($stamp; $PRODUCTS products) =="
    echo "tenfold says:      $(cat "$out/seed.txt")"
    printf 'wall time:         %s s   target <= %s s: %s\n' "$elapsed" "$MAX_SECONDS" "$verdict"
    printf 'CPU time:          %s s user, %s s system\n' "$cpu_user" "$cpu_sys"
    printf 'peak RSS:          %s MiB\n' "$(bench_mib "$maxrss_kib")"
    printf 'database on disk:  %s MiB (db + wal + shm)\n' "$size_mib"
    printf 'products in db:    %s\n' "${count:-?}"
    echo "raw output: ${out#"$REPO_ROOT"/}"
} | tee "$out/summary.txt"

if [[ "${STRICT:-0}" == 1 && "$verdict" == MISSED ]]; then
    exit 2
fi
