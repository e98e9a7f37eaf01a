#!/usr/bin/env bash
# Order writes across 1, 2 and 4 order shards: orders/s and latency through one `tenfold app`, each order
# taking stock on the catalog and writing to its customer's shard; and the cost of routing an order.
#
#   bash bench/order-writes.sh                          # SQLite shard files, 10 s per shard count
#   ENGINE=postgres bash bench/order-writes.sh          # a PostgreSQL server per shard (scripts/pg-cluster.sh)
#   DURATION=5s SHARDS="1 4" CUSTOMERS=64 bash bench/order-writes.sh
#
# Per shard count: a fresh catalog (1,000 products, products 1..100 given a stock of 1,000,000), an app with
# that many `--shard-url`s, CUSTOMERS customer tokens, then wrk POSTs one-line orders for random customers
# and products (bench/order.lua). Reports orders/s, p50/p99, non-2xx, how the orders spread over the shards
# (`tenfold shards status`) and, on PostgreSQL, CPU seconds per 1,000 orders of the catalog server and of
# the shard servers (two cores cannot show throughput scaling honestly; this shows each shard's share of the
# write load falling as shards are added). The routing cost (bucket hash, order id, map lookup) comes from
# `cargo bench -p tenfold-store --bench routing` (ROUTING=0 skips it). Raw output under bench/results/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ENGINE="${ENGINE:-sqlite}"
DURATION="${DURATION:-10s}"
THREADS="${THREADS:-2}"
CONNECTIONS="${CONNECTIONS:-32}"
SHARDS="${SHARDS:-1 2 4}"
CUSTOMERS="${CUSTOMERS:-256}"
ROUTING="${ROUTING:-1}"
KEY="bench-api-key-0123456789"

case "$ENGINE" in sqlite | postgres) ;; *) bench_die "ENGINE is sqlite or postgres (got $ENGINE)" ;; esac
bench_ensure_wrk
command -v curl >/dev/null 2>&1 || bench_die "curl is required"
secs="$(bench_seconds "$DURATION")"
bench_mktemp
work="$BENCH_TMP"
bin="$(bench_copy_binary "$work")"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="$(mktemp -d "$RESULTS_DIR/order-writes-$ENGINE-$stamp.XXXX")"
bench_machine | tee "$out/machine.txt" >&2
export TENFOLD_API_KEY="$KEY"

routing_ns=""
if [[ "$ROUTING" == 1 ]]; then
    bench_log "measuring the routing cost (cargo bench -p tenfold-store --bench routing)"
    (cd "$REPO_ROOT" && cargo bench -q -p tenfold-store --bench routing 2>/dev/null) | tee "$out/routing.txt" >&2
    routing_ns="$(sed -n 's/^routing: \([0-9.]*\) ns.*/\1/p' "$out/routing.txt")"
fi

cluster=""
if [[ "$ENGINE" == postgres ]]; then
    max=0
    for n in $SHARDS; do ((n > max)) && max=$n; done
    cluster="/tmp/tenfold-bench-pgc-$stamp-$$"
    trap 'bash "$REPO_ROOT/scripts/pg-cluster.sh" destroy --dir "$cluster" >/dev/null 2>&1 || true; bench_cleanup' EXIT
    bench_log "starting a PostgreSQL primary (the catalog) and $max shard servers"
    bash "$REPO_ROOT/scripts/pg-cluster.sh" start --dir "$cluster" --port auto --replicas 0 --shards "$max" >"$out/cluster.env"
    primary="$(sed -n 's/^TENFOLD_DATABASE_URL=//p' "$out/cluster.env")"
    IFS=, read -r -a shard_servers <<<"$(sed -n 's/^TENFOLD_SHARD_URLS=//p' "$out/cluster.env")"
fi

# A fresh database named NAME on the server of URL (which names database `tenfold`); prints its URL.
fresh_db() {
    psql "$1" -qc "CREATE DATABASE $2" >/dev/null
    echo "${1%/tenfold}/$2"
}

cpu_of() { # cpu_of SERVER -> CPU seconds (PostgreSQL only)
    bench_pg_cpu "$cluster" "$1"
}

rows=()
for n in $SHARDS; do
    dir="$work/s$n"
    mkdir -p "$dir"
    args=()
    if [[ "$ENGINE" == sqlite ]]; then
        db="sqlite://$dir/catalog.db"
        for ((i = 0; i < n; i++)); do args+=(--shard-url "sqlite://$dir/orders-$i.db"); done
    else
        db="$(fresh_db "$primary" "bench_$n")"
        for ((i = 0; i < n; i++)); do args+=(--shard-url "$(fresh_db "${shard_servers[$i]}" "bench_$n")"); done
    fi
    "$bin" seed --products 1000 --database-url "$db" >/dev/null 2>"$dir/seed.stderr"
    bench_start_app "$bin" "$db" "$dir" "${args[@]}"
    base="http://$APP_ADDR"
    for p in $(seq 1 100); do
        curl -sS -o /dev/null --max-time 5 -X PATCH "$base/api/products/$p" -H "authorization: Bearer $KEY" \
            -H 'content-type: application/json' -d '{"stock": 1000000}'
    done
    : >"$dir/tokens"
    for c in $(seq 1 "$CUSTOMERS"); do
        t="$(curl -sS --max-time 5 -X POST "$base/api/customers/$c/tokens" -H "authorization: Bearer $KEY" \
            -H 'content-type: application/json' -d '{"ttl_s": 3600}' | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')"
        [[ -n "$t" ]] || bench_die "no token for customer $c"
        echo "$c $t" >>"$dir/tokens"
    done
    bench_log "$n shard(s) ($ENGINE): app on $APP_ADDR"
    if [[ "$ENGINE" == postgres ]]; then
        cat0="$(cpu_of primary)"
        sh0=()
        for ((i = 1; i <= n; i++)); do sh0+=("$(cpu_of "shard$i")"); done
    fi
    timeout --foreground $((secs + 60)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
        -s "$BENCH_DIR/order.lua" "$base" -- "$dir/tokens" 100 >"$out/orders-$n.txt" 2>&1
    cpu_cols=""
    if [[ "$ENGINE" == postgres ]]; then
        cat1="$(cpu_of primary)"
        sh1=()
        for ((i = 1; i <= n; i++)); do sh1+=("$(cpu_of "shard$i")"); done
    fi
    bench_stop_pid "$APP_PID"
    "$bin" shards status --database-url "$db" "${args[@]}" >"$out/status-$n.txt" 2>&1
    spread="$(awk 'NR > 2 && $1 ~ /^[0-9]+$/ { printf "%s%s", sep, $3; sep = " / " }' "$out/status-$n.txt")"
    orders="$(awk 'NR > 2 && $1 ~ /^[0-9]+$/ { s += $3 } END { print s + 0 }' "$out/status-$n.txt")"
    if [[ "$ENGINE" == postgres ]]; then
        per_shard=""
        for ((i = 0; i < n; i++)); do
            per_shard+="${per_shard:+ / }$(awk -v a="${sh0[$i]}" -v b="${sh1[$i]}" -v t="$orders" 'BEGIN { printf "%.2f", t ? (b - a) * 1000 / t : 0 }')"
        done
        cpu_cols=" $(awk -v a="$cat0" -v b="$cat1" -v t="$orders" 'BEGIN { printf "%.2f", t ? (b - a) * 1000 / t : 0 }') | $per_shard |"
    fi
    p50="$(bench_wrk_field "$out/orders-$n.txt" p50)"
    share="n/a"
    [[ -n "$routing_ns" ]] && share="$(awk -v r="$routing_ns" -v p="$p50" 'BEGIN { printf "%.5f%%", p ? 100 * r / (p * 1e6) : 0 }')"
    rows+=("| $n | $(printf '%.0f' "$(bench_wrk_field "$out/orders-$n.txt" rps)") | $p50 / $(bench_wrk_field "$out/orders-$n.txt" p99) ms | $(bench_wrk_field "$out/orders-$n.txt" non2xx) | $spread |$cpu_cols $share |")
done

{
    echo
    echo "== order-writes $ENGINE ($stamp; wrk -t$THREADS -c$CONNECTIONS -d$DURATION; one-line orders, $CUSTOMERS customers, 100 products) =="
    echo
    [[ -n "$routing_ns" ]] && echo "routing (bucket hash, order id, map lookup): $routing_ns ns per order" && echo
    if [[ "$ENGINE" == postgres ]]; then
        echo "| Shards | Orders/s | p50 / p99 | non-2xx | Orders per shard | Catalog CPU s / 1k orders | Shard CPU s / 1k orders | Routing / p50 |"
        echo "|---:|---:|---:|---:|---|---:|---|---:|"
    else
        echo "| Shards | Orders/s | p50 / p99 | non-2xx | Orders per shard | Routing / p50 |"
        echo "|---:|---:|---:|---:|---|---:|"
    fi
    printf '%s\n' "${rows[@]}"
    echo
    echo "raw output: ${out#"$REPO_ROOT"/}"
} | tee "$out/summary.md"
