#!/usr/bin/env bash
# A 100,000-row CSV bulk import through one `tenfold app` and one `tenfold worker` on SQLite (or
# DATABASE_URL): time from the POST to the job's end, rows/s, and the result's counts. ROWS to change.
#
#   bash bench/import.sh
#   ROWS=20000 bash bench/import.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROWS="${ROWS:-100000}"
KEY="bench-api-key-0123456789"
command -v python3 >/dev/null 2>&1 || bench_die "python3 is required"
command -v curl >/dev/null 2>&1 || bench_die "curl is required"
bench_mktemp
work="$BENCH_TMP"
bin="$(bench_copy_binary "$work")"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="$(mktemp -d "$RESULTS_DIR/import-$stamp.XXXX")"
bench_machine | tee "$out/machine.txt" >&2
export TENFOLD_API_KEY="$KEY" TENFOLD_MEDIA__DIR="$work/blobs"
db="${DATABASE_URL:-sqlite://$work/tenfold.db}"

"$bin" migrate --database-url "$db" >/dev/null 2>"$work/migrate.stderr"
python3 - "$work/products.csv" "$ROWS" <<'PY'
import sys
n = int(sys.argv[2])
cats = ["lighting", "furniture", "kitchen", "garden", "office"]
with open(sys.argv[1], "w") as f:
    f.write("sku,name,description,price_minor,currency,stock,category\n")
    for i in range(n):
        f.write(f'IMP-{i:07d},Imported product {i},"Bulk-imported, row {i}",{100 + i % 9000},EUR,{i % 500},{cats[i % len(cats)]}\n')
PY
size="$(stat -c %s "$work/products.csv")"
bench_start_app "$bin" "$db" "$work"
base="http://$APP_ADDR"
"$bin" worker --database-url "$db" --queues import --concurrency 1 >"$work/worker.out" 2>"$work/worker.err" &
bench_track_pid $!
# Categories the rows name must exist.
for c in lighting furniture kitchen garden office; do
    curl -sS -o /dev/null -X POST "$base/api/categories" -H "authorization: Bearer $KEY" \
        -H 'content-type: application/json' -d "{\"slug\": \"$c\", \"name\": \"$c\"}" || true
done
t0="$(date +%s%3N)"
job="$(curl -sS -X POST "$base/api/imports" -H "authorization: Bearer $KEY" -H 'content-type: text/csv' \
    --data-binary @"$work/products.csv" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
t_ack="$(date +%s%3N)"
while :; do
    curl -sS "$base/api/jobs/$job" -H "authorization: Bearer $KEY" >"$out/job.json"
    state="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["state"])' "$out/job.json")"
    [[ "$state" == done || "$state" == failed || "$state" == dead ]] && break
    sleep 0.2
done
t1="$(date +%s%3N)"
read -r imported errors < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])).get("result") or {}; print(r.get("imported", 0), r.get("error_count", 0))' "$out/job.json")
{
    echo
    echo "== import ($stamp; $ROWS rows, $size bytes, one worker; $db) =="
    echo
    echo "| Rows | Upload answered (202) | Import done | Rows/s | Imported | Row errors | State |"
    echo "|---:|---:|---:|---:|---:|---:|---|"
    echo "| $ROWS | $((t_ack - t0)) ms | $(( (t1 - t0) / 1000 )).$(( (t1 - t0) % 1000 / 100 )) s | $(awk -v n="$ROWS" -v ms="$((t1 - t0))" 'BEGIN { printf "%.0f", n * 1000 / ms }') | $imported | $errors | $state |"
    echo
    echo "raw output: ${out#"$REPO_ROOT"/}"
} | tee "$out/summary.md"
