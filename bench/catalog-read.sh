#!/usr/bin/env bash
# Catalog read benchmark: one `tenfold app` instance over a fresh SQLite catalog of 100,000 products, with
# the cache off (`--no-cache`), so every read reaches the database: the read path's own cost.
#
#   bash bench/catalog-read.sh                      # 20 s per wrk phase
#   DURATION=5s bash bench/catalog-read.sh          # shorter run
#   CONNECTIONS=16 bash bench/catalog-read.sh       # other concurrency (default 64)
#
# Phases: seed -> start app -> idle RSS (after 1 s idle) -> wrk /healthz -> wrk /api/products/{random}
# -> RSS after load. Targets: products/healthz req/s ratio >= 0.50, idle RSS <= 30 MiB,
# RSS after load <= 60 MiB. Raw wrk output goes to bench/results/ (gitignored).
# STRICT=1 makes the script exit 2 when a target is missed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-20s}"
THREADS="${THREADS:-2}"
CONNECTIONS="${CONNECTIONS:-64}"
PRODUCTS="${PRODUCTS:-100000}"
MIN_RATIO=0.50
MAX_IDLE_MIB=30
MAX_AFTER_MIB=60

bench_ensure_wrk
command -v curl >/dev/null 2>&1 || bench_die "curl is required"

secs="$(bench_seconds "$DURATION")"
wrk_timeout=$((secs + 60))

bench_mktemp
work="$BENCH_TMP"
bin="$(bench_copy_binary "$work")"
db_url="sqlite://$work/tenfold.db"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="$RESULTS_DIR/catalog-read-$stamp"
mkdir -p "$out"

{
    bench_machine
    echo "binary: $(sha256sum "$bin" | cut -c1-16) (copy of ${TENFOLD_BIN:-target/release/tenfold}, built $(date -u -r "${TENFOLD_BIN:-$REPO_ROOT/target/release/tenfold}" '+%F %T UTC'))"
    echo "git:    $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO_ROOT" diff --quiet -- crates 2>/dev/null || echo ' (crates/ has uncommitted changes)')"
    echo "load:   wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency; products=$PRODUCTS"
} | tee "$out/machine.txt" >&2

bench_log "seeding $PRODUCTS products into $work/tenfold.db"
timeout --foreground --kill-after=5 600 "$bin" seed --products "$PRODUCTS" --database-url "$db_url" \
    >"$out/seed.txt" 2>"$out/seed.stderr"
cat "$out/seed.txt" >&2

# --no-cache: this measures the database read path; the cache has its own benchmark (cache-zipf.sh).
bench_start_app "$bin" "$db_url" "$work" --no-cache
bench_log "app pid $APP_PID listening on $APP_ADDR"
base="http://$APP_ADDR"

sleep 1
idle_kib="$(bench_rss_kib "$APP_PID")"
bench_log "idle RSS: $(bench_mib "$idle_kib") MiB"

# Sanity: both routes answer 200 before we measure them.
for path in /healthz /api/products/1 "/api/products/$PRODUCTS"; do
    code="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "$base$path")"
    [[ "$code" == 200 ]] || bench_die "GET $path answered $code, expected 200"
done

run_wrk() { # run_wrk NAME URL [-s SCRIPT [-- SCRIPT ARGS...]]
    local name="$1" url="$2"
    shift 2
    local pre=() post=()
    if [[ "${1:-}" == -s ]]; then pre=(-s "$2"); shift 2; fi
    post=("$@")
    local cpu0 cpu1
    cpu0="$(bench_cpu_seconds "$APP_PID")"
    bench_log "wrk $name: -t$THREADS -c$CONNECTIONS -d$DURATION"
    timeout --foreground --kill-after=5 "$wrk_timeout" \
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --timeout 10s --latency "${pre[@]+"${pre[@]}"}" "$url" "${post[@]+"${post[@]}"}" \
        >"$out/$name.txt" 2>&1 || bench_die "wrk $name failed: $(cat "$out/$name.txt")"
    cpu1="$(bench_cpu_seconds "$APP_PID")"
    awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f\n", b - a }' >"$out/$name.server-cpu-seconds"
    cat "$out/$name.txt" >&2
}

run_wrk healthz "$base/healthz"
run_wrk products "$base" -s "$BENCH_DIR/random-product.lua" -- "$PRODUCTS"

after_kib="$(bench_rss_kib "$APP_PID")"
hwm_kib="$(bench_status_kib "$APP_PID" VmHWM)"
anon_kib="$(bench_status_kib "$APP_PID" RssAnon)"
file_kib="$(bench_status_kib "$APP_PID" RssFile)"
threads_after="$(bench_status_kib "$APP_PID" Threads)"
# PSS divides each page among its mappings: SQLite's mmap of the same file by several pooled
# connections counts once per connection in RSS but only once in PSS.
pss_kib="$(awk '$1 == "Pss:" { print $2 }' "/proc/$APP_PID/smaps_rollup" 2>/dev/null || echo 0)"
db_maps="$(awk '/^[0-9a-f]+-[0-9a-f]+ / { if ($6 ~ /tenfold\.db$/) n++ } END { print n + 0 }' "/proc/$APP_PID/maps")"

bench_stop_pid "$APP_PID"

h_rps="$(bench_wrk_field "$out/healthz.txt" rps)"
p_rps="$(bench_wrk_field "$out/products.txt" rps)"
ratio="$(awk -v p="$p_rps" -v h="$h_rps" 'BEGIN { printf "%.3f", p / h }')"
idle_mib="$(bench_mib "$idle_kib")"
after_mib="$(bench_mib "$after_kib")"

verdict() { # verdict VALUE OP LIMIT -> met / MISSED
    awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN {
        ok = (op == ">=") ? (v >= l) : (v <= l); print ok ? "met" : "MISSED" }'
}
v_ratio="$(verdict "$ratio" ">=" "$MIN_RATIO")"
v_idle="$(verdict "$idle_mib" "<=" "$MAX_IDLE_MIB")"
v_after="$(verdict "$after_mib" "<=" "$MAX_AFTER_MIB")"

{
    echo
    echo "== catalog-read summary ($stamp; wrk -t$THREADS -c$CONNECTIONS -d$DURATION; $PRODUCTS products) =="
    printf '%-28s %12s %12s\n' "" "/healthz" "/products/id"
    printf '%-28s %12.0f %12.0f\n' "requests/s" "$h_rps" "$p_rps"
    printf '%-28s %12s %12s\n' "p50 latency (ms)" "$(bench_wrk_field "$out/healthz.txt" p50)" "$(bench_wrk_field "$out/products.txt" p50)"
    printf '%-28s %12s %12s\n' "p99 latency (ms)" "$(bench_wrk_field "$out/healthz.txt" p99)" "$(bench_wrk_field "$out/products.txt" p99)"
    printf '%-28s %12s %12s\n' "requests completed" "$(bench_wrk_field "$out/healthz.txt" requests)" "$(bench_wrk_field "$out/products.txt" requests)"
    printf '%-28s %12s %12s\n' "non-2xx responses" "$(bench_wrk_field "$out/healthz.txt" non2xx)" "$(bench_wrk_field "$out/products.txt" non2xx)"
    printf '%-28s %12s %12s\n' "socket errors" "$(bench_wrk_field "$out/healthz.txt" errors)" "$(bench_wrk_field "$out/products.txt" errors)"
    printf '%-28s %12s %12s\n' "server CPU seconds" "$(cat "$out/healthz.server-cpu-seconds")" "$(cat "$out/products.server-cpu-seconds")"
    echo
    printf '%-28s %12s   target >= %s: %s\n' "ratio products/healthz" "$ratio" "$MIN_RATIO" "$v_ratio"
    printf '%-28s %8s MiB   target <= %s MiB: %s\n' "idle RSS" "$idle_mib" "$MAX_IDLE_MIB" "$v_idle"
    printf '%-28s %8s MiB   target <= %s MiB: %s\n' "RSS after load" "$after_mib" "$MAX_AFTER_MIB" "$v_after"
    printf '%-28s anon %s MiB + file-backed %s MiB; peak VmHWM %s MiB; %s threads\n' \
        "  RSS after, breakdown" "$(bench_mib "$anon_kib")" "$(bench_mib "$file_kib")" "$(bench_mib "$hwm_kib")" "$threads_after"
    printf '%-28s PSS %s MiB; the database file (%s MiB) is mapped %s times\n' \
        "  RSS after, shared pages" "$(bench_mib "$pss_kib")" "$(du -m "$work/tenfold.db" | cut -f1)" "$db_maps"
    echo
    echo "raw output: ${out#"$REPO_ROOT"/}"
} | tee "$out/summary.txt"

if [[ "${STRICT:-0}" == 1 && "$v_ratio$v_idle$v_after" == *MISSED* ]]; then
    exit 2
fi
