#!/usr/bin/env bash
# Cache benchmark: Zipf-distributed product reads (s = 1.0) over a catalog of 100,000 products, with the
# cache on and off, through one `tenfold app`, then through `tenfold up` (3 instances) with Redis.
#
#   bash bench/cache-zipf.sh                       # 15 s per measured wrk phase
#   DURATION=8s bash bench/cache-zipf.sh           # shorter phases
#   UP=0 bash bench/cache-zipf.sh                  # only the single-instance part
#   REDIS_URL=redis://127.0.0.1:6379 ...           # the Redis for the `up` part (default shown)
#
# Single instance, per mode (on = default cache, off = --no-cache), each on a fresh process:
#   start -> warm pass (every id at least once, sequential, 8 s; on only) -> Zipf warm-up (WARMUP, discarded)
#   -> wrk /healthz -> wrk Zipf (measured) with /metrics scraped before and after.
# "Database queries" are the cache's loads (`cache_loads_total`: every read that reached the database;
# with the cache off every product read is one). Goals (cache on): Zipf req/s >= 0.80 x /healthz req/s of
# the same process in the same run; database queries per 1,000 requests <= 20 at steady state (after the
# warm pass: with a 10-minute TTL and this traffic, every key is read many times per TTL).
# `up` part: `tenfold up --instances 3 --min 3 --max 3 --redis-url ...` on the same catalog; the same
# phases through the balancer (a 24 s warm pass, as each instance sees a third of it); loads summed over
# the three instances' /metrics.
# Everything binds to 127.0.0.1; only processes this script started are stopped. Raw output under
# bench/results/. STRICT=1 makes the script exit 2 when a goal is missed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-15s}"
WARMUP="${WARMUP:-5s}"
THREADS="${THREADS:-2}"
CONNECTIONS="${CONNECTIONS:-64}"
PRODUCTS="${PRODUCTS:-100000}"
UP="${UP:-1}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
MIN_RATIO=0.80
MAX_QUERIES_PER_1000=20

bench_ensure_wrk
command -v curl >/dev/null 2>&1 || bench_die "curl is required"
command -v python3 >/dev/null 2>&1 || bench_die "python3 is required"

secs="$(bench_seconds "$DURATION")"
wrk_timeout=$((secs + 60))

bench_mktemp
work="$BENCH_TMP"
bin="$(bench_copy_binary "$work")"
db_url="sqlite://$work/tenfold.db"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="$(mktemp -d "$RESULTS_DIR/cache-zipf-$stamp.XXXX")"

{
    bench_machine
    echo "binary: $(sha256sum "$bin" | cut -c1-16) (copy of ${TENFOLD_BIN:-target/release/tenfold})"
    echo "git:    $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO_ROOT" diff --quiet -- crates 2>/dev/null || echo ' (crates/ has uncommitted changes)')"
    echo "load:   wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency; Zipf s=${ZIPF_S:-1.0} over $PRODUCTS products"
} | tee "$out/machine.txt" >&2

bench_log "seeding $PRODUCTS products"
timeout --foreground --kill-after=5 600 "$bin" seed --products "$PRODUCTS" --database-url "$db_url" \
    >"$out/seed.txt" 2>"$out/seed.stderr"

wrk_run() { # wrk_run NAME DURATION URL [-s SCRIPT [-- ARGS...]]
    local name="$1" dur="$2" url="$3"
    shift 3
    local pre=() post=()
    if [[ "${1:-}" == -s ]]; then pre=(-s "$2"); shift 2; fi
    post=("$@")
    bench_log "wrk $name: -t$THREADS -c$CONNECTIONS -d$dur"
    timeout --foreground --kill-after=5 "$wrk_timeout" \
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"$dur" --timeout 10s --latency "${pre[@]+"${pre[@]}"}" "$url" "${post[@]+"${post[@]}"}" \
        >"$out/$name.txt" 2>&1 || bench_die "wrk $name failed: $(cat "$out/$name.txt")"
}

# Sum of a counter over the given base URLs' /metrics.
metric_sum() { # metric_sum NAME URL...
    local name="$1" total=0 v
    shift
    for u in "$@"; do
        v="$(curl -sS --max-time 5 "$u/metrics" | awk -v n="$name" '$1 == n { print $2 }')"
        total="$(awk -v a="$total" -v b="${v:-0}" 'BEGIN { printf "%.0f", a + b }')"
    done
    echo "$total"
}

# measure LABEL BASE METRICS_URL... : the phases against BASE; loads scraped from the METRICS_URLs.
measure() {
    local label="$1" base="$2" warm="$3" warm_for="$4"
    shift 4
    for path in /healthz /api/products/1 "/api/products/$PRODUCTS"; do
        code="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "$base$path")"
        [[ "$code" == 200 ]] || bench_die "GET $base$path answered $code, expected 200"
    done
    if [[ "$warm" == 1 ]]; then
        wrk_run "$label-warm-pass" "$warm_for" "$base" -s "$BENCH_DIR/sequential-product.lua" -- "$PRODUCTS" "$THREADS"
    fi
    wrk_run "$label-warmup" "$WARMUP" "$base" -s "$BENCH_DIR/zipf-product.lua" -- "$PRODUCTS"
    wrk_run "$label-healthz" "$DURATION" "$base/healthz"
    local l0 l1
    l0="$(metric_sum cache_loads_total "$@")"
    wrk_run "$label-zipf" "$DURATION" "$base" -s "$BENCH_DIR/zipf-product.lua" -- "$PRODUCTS"
    l1="$(metric_sum cache_loads_total "$@")"
    local req
    req="$(bench_wrk_field "$out/$label-zipf.txt" requests)"
    awk -v a="$l0" -v b="$l1" -v r="$req" 'BEGIN { printf "%.1f\n", (b - a) * 1000 / r }' >"$out/$label.queries-per-1000"
    printf '%s\t%s\n' "$((l1 - l0))" "$req" >"$out/$label.loads"
}

for mode in on off; do
    args=()
    [[ "$mode" == off ]] && args=(--no-cache)
    bench_start_app "$bin" "$db_url" "$work" "${args[@]+"${args[@]}"}"
    bench_log "app ($mode) pid $APP_PID on $APP_ADDR"
    measure "one-$mode" "http://$APP_ADDR" "$([[ $mode == on ]] && echo 1 || echo 0)" 8s "http://$APP_ADDR"
    bench_stop_pid "$APP_PID"
done

if [[ "$UP" == 1 ]]; then
    redis_host="${REDIS_URL#redis://}"
    redis_host="${redis_host%%/*}"
    redis-cli -h "${redis_host%%:*}" -p "${redis_host##*:}" PING >/dev/null 2>&1 ||
        bench_die "no Redis answers at $REDIS_URL (set REDIS_URL, or UP=0)"
    # The instances inherit this: the run's keys do not mix with anyone else's in a shared Redis.
    export TENFOLD_CACHE__REDIS_PREFIX="tenfold-bench:$stamp:"
    bench_start_up "$bin" "$work/up" "$out/up" -- --instances 3 --min 3 --max 3 \
        --database-url "$db_url" --redis-url "$REDIS_URL"
    lb_url="$UP_URL"
    instances=("${UP_INSTANCES[@]}")
    ((${#instances[@]} == 3)) || bench_die "expected 3 instances, got ${#instances[@]}"
    bench_log "tenfold up at $lb_url, instances ${instances[*]}"
    # The balancer spreads the warm pass over the three instances: three times as long, so that every
    # instance's L1 sees every id (from the database once, then from Redis).
    measure "up-on" "$lb_url" 1 24s "${instances[@]}"
    bench_up_instances
    [[ "${UP_INSTANCES[*]}" == "${instances[*]}" ]] || bench_log "warning: the instance set changed during the run"
    l2_hits="$(metric_sum 'cache_requests_total{tier="l2",result="hit"}' "${instances[@]}")"
    echo "$l2_hits" >"$out/up-on.l2-hits"
    bench_stop_pid "$UP_PID"
fi

row() { # row LABEL
    local l="$1" h z
    h="$(bench_wrk_field "$out/$l-healthz.txt" rps)"
    z="$(bench_wrk_field "$out/$l-zipf.txt" rps)"
    printf '| %s | %.0f | %.0f | %.3f | %s / %s ms | %s / %s ms | %s | %s |\n' "$l" "$h" "$z" \
        "$(awk -v a="$z" -v b="$h" 'BEGIN { print a / b }')" \
        "$(bench_wrk_field "$out/$l-zipf.txt" p50)" "$(bench_wrk_field "$out/$l-zipf.txt" p99)" \
        "$(bench_wrk_field "$out/$l-healthz.txt" p50)" "$(bench_wrk_field "$out/$l-healthz.txt" p99)" \
        "$(cat "$out/$l.queries-per-1000")" \
        "$(bench_wrk_field "$out/$l-zipf.txt" non2xx) / $(bench_wrk_field "$out/$l-zipf.txt" errors)"
}

ratio_on="$(awk -v a="$(bench_wrk_field "$out/one-on-zipf.txt" rps)" -v b="$(bench_wrk_field "$out/one-on-healthz.txt" rps)" 'BEGIN { printf "%.3f", a / b }')"
q_on="$(cat "$out/one-on.queries-per-1000")"
v_ratio="$(awk -v v="$ratio_on" -v l="$MIN_RATIO" 'BEGIN { print (v >= l) ? "met" : "MISSED" }')"
v_q="$(awk -v v="$q_on" -v l="$MAX_QUERIES_PER_1000" 'BEGIN { print (v <= l) ? "met" : "MISSED" }')"
{
    echo
    echo "== cache-zipf ($stamp; wrk -t$THREADS -c$CONNECTIONS -d$DURATION; Zipf s=${ZIPF_S:-1.0}, $PRODUCTS products) =="
    echo
    echo "| Run | /healthz req/s | Zipf reads req/s | Zipf / healthz | Zipf p50 / p99 | healthz p50 / p99 | DB queries per 1,000 | non-2xx / socket errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    row one-on
    row one-off
    [[ "$UP" == 1 ]] && row up-on
    echo
    echo "Goal, cache-hit reads >= $MIN_RATIO x /healthz (one instance, cache on): $ratio_on: $v_ratio"
    echo "Goal, database queries per 1,000 requests <= $MAX_QUERIES_PER_1000 (one instance, cache on): $q_on: $v_q"
    [[ "$UP" == 1 ]] && echo "tenfold up: L2 (Redis) hits during the run, all instances: $(cat "$out/up-on.l2-hits")"
    echo
    echo "raw output: ${out#"$REPO_ROOT"/}"
} | tee "$out/summary.md"

if [[ "${STRICT:-0}" == 1 && "$v_ratio$v_q" == *MISSED* ]]; then
    exit 2
fi
