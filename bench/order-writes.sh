#!/usr/bin/env bash
# Order writes across 1, 2 and 4 order shards (SQLite files): orders/s and latency through one
# `tenfold app`, each order taking stock on the catalog and writing to its customer's shard.
#
#   bash bench/order-writes.sh                 # 10 s per shard count
#   DURATION=5s SHARDS="1 4" bash bench/order-writes.sh
#
# Per shard count: a fresh catalog (1,000 products, products 1..100 given a stock of 1,000,000), an app with
# that many `--shard-url`s, 64 customer tokens, then wrk POSTs one-line orders for random customers and
# products (bench/order.lua). Reports orders/s, p50/p99, non-2xx, and how the orders spread over the shards
# (`tenfold shards status`). Raw output under bench/results/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-10s}"
THREADS="${THREADS:-2}"
CONNECTIONS="${CONNECTIONS:-32}"
SHARDS="${SHARDS:-1 2 4}"
KEY="bench-api-key-0123456789"

bench_ensure_wrk
command -v curl >/dev/null 2>&1 || bench_die "curl is required"
command -v python3 >/dev/null 2>&1 || bench_die "python3 is required"
secs="$(bench_seconds "$DURATION")"
bench_mktemp
work="$BENCH_TMP"
bin="$(bench_copy_binary "$work")"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="$(mktemp -d "$RESULTS_DIR/order-writes-$stamp.XXXX")"
bench_machine | tee "$out/machine.txt" >&2
export TENFOLD_API_KEY="$KEY"

rows=()
for n in $SHARDS; do
    dir="$work/s$n"
    mkdir -p "$dir"
    db="sqlite://$dir/catalog.db"
    args=()
    for ((i = 0; i < n; i++)); do args+=(--shard-url "sqlite://$dir/orders-$i.db"); done
    "$bin" seed --products 1000 --database-url "$db" >/dev/null 2>"$dir/seed.stderr"
    bench_start_app "$bin" "$db" "$dir" "${args[@]}"
    base="http://$APP_ADDR"
    for p in $(seq 1 100); do
        curl -sS -o /dev/null --max-time 5 -X PATCH "$base/api/products/$p" -H "authorization: Bearer $KEY" \
            -H 'content-type: application/json' -d '{"stock": 1000000}'
    done
    : >"$dir/tokens"
    for c in $(seq 1 64); do
        t="$(curl -sS --max-time 5 -X POST "$base/api/customers/$c/tokens" -H "authorization: Bearer $KEY" \
            -H 'content-type: application/json' -d '{"ttl_s": 3600}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"
        echo "$c $t" >>"$dir/tokens"
    done
    bench_log "$n shard(s): app on $APP_ADDR"
    timeout --foreground $((secs + 60)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
        -s "$BENCH_DIR/order.lua" "$base" -- "$dir/tokens" 100 >"$out/orders-$n.txt" 2>&1
    bench_stop_pid "$APP_PID"
    "$bin" shards status --database-url "$db" "${args[@]}" >"$out/status-$n.txt" 2>&1
    spread="$(awk 'NR > 2 && $1 ~ /^[0-9]+$/ { printf "%s%s", sep, $3; sep = "/" }' "$out/status-$n.txt")"
    rows+=("| $n | $(printf '%.0f' "$(bench_wrk_field "$out/orders-$n.txt" rps)") | $(bench_wrk_field "$out/orders-$n.txt" p50) / $(bench_wrk_field "$out/orders-$n.txt" p99) ms | $(bench_wrk_field "$out/orders-$n.txt" non2xx) | $spread |")
done

{
    echo
    echo "== order-writes ($stamp; wrk -t$THREADS -c$CONNECTIONS -d$DURATION; one-line orders, 64 customers, 100 products) =="
    echo
    echo "| Shards | Orders/s | p50 / p99 | non-2xx | Orders per shard |"
    echo "|---:|---:|---:|---:|---|"
    printf '%s\n' "${rows[@]}"
    echo
    echo "raw output: ${out#"$REPO_ROOT"/}"
} | tee "$out/summary.md"
