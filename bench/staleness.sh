#!/usr/bin/env bash
# Bounded staleness: how long after a write through instance A does instance B show it? Two `tenfold app`
# processes on one database, over each invalidation channel:
#   sqlite    SQLite file, the change-feed table (polled every 10 ms)
#   postgres  PostgreSQL (a fresh database on PG_URL), LISTEN/NOTIFY
#   redis     SQLite file plus --redis-url (Redis pub/sub beside the table)
#
#   bash bench/staleness.sh                          # 300 writes per channel
#   WRITES=1000 CHANNELS="sqlite redis" bash bench/staleness.sh
#
# Each write: B reads the product (caching it), A patches it, then B is read every 1 ms until it shows the
# new version; the time from A's response to B's first fresh read is one sample. Goal: p99 <= 100 ms.
# Env: PG_URL (default postgres://postgres@127.0.0.1:5432/postgres), REDIS_URL (redis://127.0.0.1:6379).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WRITES="${WRITES:-300}"
PRODUCTS="${PRODUCTS:-1000}"
CHANNELS="${CHANNELS:-sqlite postgres redis}"
PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
MAX_P99_MS=100
KEY="bench-api-key-0123456789"

command -v python3 >/dev/null 2>&1 || bench_die "python3 is required"
bench_mktemp
work="$BENCH_TMP"
bin="$(bench_copy_binary "$work")"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="$(mktemp -d "$RESULTS_DIR/staleness-$stamp.XXXX")"
bench_machine | tee "$out/machine.txt" >&2
export TENFOLD_API_KEY="$KEY"
export TENFOLD_CACHE__REDIS_PREFIX="tenfold-bench:$stamp:"

pg_db=""
cleanup_pg() {
    if [[ -n "$pg_db" ]]; then
        psql "$PG_URL" -qc "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" >/dev/null 2>&1 || true
    fi
}
trap 'cleanup_pg; bench_cleanup' EXIT

results=()
for ch in $CHANNELS; do
    extra=()
    case "$ch" in
        sqlite) url="sqlite://$work/$ch.db" ;;
        redis) url="sqlite://$work/$ch.db"; extra=(--redis-url "$REDIS_URL") ;;
        postgres)
            pg_db="tenfold_bench_$(date +%s)_$$"
            psql "$PG_URL" -qc "CREATE DATABASE $pg_db" >/dev/null
            url="${PG_URL%/*}/$pg_db"
            ;;
        *) bench_die "unknown channel $ch" ;;
    esac
    "$bin" seed --products "$PRODUCTS" --database-url "$url" >/dev/null 2>"$out/$ch.seed.stderr"
    mkdir -p "$work/$ch-a" "$work/$ch-b"
    bench_start_app "$bin" "$url" "$work/$ch-a" "${extra[@]+"${extra[@]}"}"
    a_pid="$APP_PID" a_addr="$APP_ADDR"
    bench_start_app "$bin" "$url" "$work/$ch-b" "${extra[@]+"${extra[@]}"}"
    b_pid="$APP_PID" b_addr="$APP_ADDR"
    sleep 1 # subscriptions and Redis connections come up
    bench_log "$ch: A $a_addr, B $b_addr, $WRITES writes"
    line="$(timeout 600 python3 "$BENCH_DIR/staleness.py" "$a_addr" "$b_addr" "$KEY" "$WRITES" "$PRODUCTS")" ||
        bench_die "$ch: the probe failed"
    echo "$line" >"$out/$ch.json"
    results+=("$ch $line")
    bench_stop_pid "$a_pid"
    bench_stop_pid "$b_pid"
    [[ "$ch" == postgres ]] && { cleanup_pg; pg_db=""; }
done

{
    echo
    echo "== staleness ($stamp; $WRITES writes per channel; B polled every 1 ms) =="
    echo
    echo "| Channel | p50 | p90 | p99 | max | p99 <= $MAX_P99_MS ms |"
    echo "|---|---:|---:|---:|---:|---|"
    missed=0
    for r in "${results[@]}"; do
        ch="${r%% *}"
        json="${r#* }"
        read -r p50 p90 p99 max < <(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["p50_ms"], d["p90_ms"], d["p99_ms"], d["max_ms"])' "$json")
        ok="$(awk -v v="$p99" -v l="$MAX_P99_MS" 'BEGIN { print (v <= l) ? "met" : "MISSED" }')"
        [[ "$ok" == met ]] || missed=1
        echo "| $ch | $p50 ms | $p90 ms | $p99 ms | $max ms | $ok |"
    done
    echo
    echo "raw output: ${out#"$REPO_ROOT"/}"
} | tee "$out/summary.md"
if [[ "${STRICT:-0}" == 1 && "$missed" == 1 ]]; then exit 2; fi
