#!/usr/bin/env bash
# Diagnostic companion to catalog-read.sh: where does the server spend its CPU under load?
#
#   bash bench/profile-products.sh                          # products route, 64 connections, 10 s
#   CONNECTIONS=16 bash bench/profile-products.sh
#   ROUTE=healthz bash bench/profile-products.sh            # the yardstick, for comparison
#   CACHE=on bash bench/profile-products.sh                 # with the cache on (default: --no-cache)
#
# Seeds 100,000 products into a fresh temp DB, starts one app, runs wrk for DURATION while
# `perf record` samples the app (if perf is usable), then prints: req/s, server CPU split by thread
# name, context switches per request, the top of the perf profile, and the resident memory by mapping.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-10s}"
THREADS="${THREADS:-2}"
CONNECTIONS="${CONNECTIONS:-64}"
PRODUCTS="${PRODUCTS:-100000}"
ROUTE="${ROUTE:-products}"
PERF="${PERF:-1}"

bench_ensure_wrk
secs="$(bench_seconds "$DURATION")"

bench_mktemp
work="$BENCH_TMP"
bin="$(bench_copy_binary "$work")"
db_url="sqlite://$work/tenfold.db"
out="$RESULTS_DIR/profile-$ROUTE-c$CONNECTIONS-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"

timeout --foreground --kill-after=5 600 "$bin" seed --products "$PRODUCTS" --database-url "$db_url" >"$out/seed.txt" 2>&1
# CACHE=on profiles cache hits; the default matches catalog-read.sh (the database read path).
if [[ "${CACHE:-off}" == on ]]; then
    bench_start_app "$bin" "$db_url" "$work"
else
    bench_start_app "$bin" "$db_url" "$work" --no-cache
fi
base="http://$APP_ADDR"
bench_log "app pid $APP_PID on $APP_ADDR; route=$ROUTE c=$CONNECTIONS d=$DURATION"

# tid comm cpu-ticks ctx-switches, one line per thread of the app.
snapshot() {
    local t comm ticks sw
    for t in /proc/"$APP_PID"/task/*; do
        # A thread may exit between the glob and the reads: skip it quietly.
        { comm="$(tr ' ' '_' <"$t/comm")"; } 2>/dev/null || continue
        { ticks="$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "$t/stat")"; } 2>/dev/null || continue
        { sw="$(awk '/ctxt_switches/ { s += $2 } END { print s + 0 }' "$t/status")"; } 2>/dev/null || continue
        echo "${t##*/} $comm $ticks $sw"
    done
}

case "$ROUTE" in
    products) wrk_args=(-s "$BENCH_DIR/random-product.lua" "$base" -- "$PRODUCTS") ;;
    healthz) wrk_args=("$base/healthz") ;;
    *) bench_die "ROUTE must be products or healthz" ;;
esac

snapshot >"$out/threads.before"
cpu0="$(bench_cpu_seconds "$APP_PID")"
perf_pid=""
if [[ "$PERF" == 1 ]] && command -v perf >/dev/null 2>&1; then
    perf record -F 499 -g -p "$APP_PID" -o "$out/perf.data" -- sleep "$secs" >"$out/perf-record.log" 2>&1 &
    perf_pid=$!
    bench_track_pid "$perf_pid"
fi
timeout --foreground --kill-after=5 $((secs + 60)) \
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --timeout 10s --latency "${wrk_args[@]}" >"$out/wrk.txt" 2>&1
snapshot >"$out/threads.after"
cpu1="$(bench_cpu_seconds "$APP_PID")"
[[ -n "$perf_pid" ]] && { wait "$perf_pid" || bench_log "perf record exited non-zero (see $out/perf-record.log)"; }

tck="$(getconf CLK_TCK)"
reqs="$(bench_wrk_field "$out/wrk.txt" requests)"
{
    echo "== profile: $ROUTE, wrk -t$THREADS -c$CONNECTIONS -d$DURATION =="
    echo "requests/s: $(bench_wrk_field "$out/wrk.txt" rps)   p50 $(bench_wrk_field "$out/wrk.txt" p50) ms   p99 $(bench_wrk_field "$out/wrk.txt" p99) ms   non-2xx $(bench_wrk_field "$out/wrk.txt" non2xx)"
    echo
    echo "server CPU during the run, by thread name (threads of the same name summed):"
    awk -v tck="$tck" -v reqs="$reqs" -v secs="$secs" '
        NR == FNR { t0[$1] = $3; s0[$1] = $4; next }
        { name = $2; sub(/-?[0-9]+$/, "", name); c = ($3 - t0[$1]) / tck; s = $4 - s0[$1]
          cpu[name] += c; sw[name] += s; n[name]++; tc += c; ts += s }
        END {
            printf "  %-28s %8s %8s %10s %12s\n", "thread", "count", "cpu s", "cores", "ctx sw/req"
            for (k in cpu) printf "  %-28s %8d %8.2f %10.2f %12.2f\n", k, n[k], cpu[k], cpu[k] / secs, sw[k] / reqs
            printf "  %-28s %8s %8.2f %10.2f %12.2f\n", "TOTAL", "", tc, tc / secs, ts / reqs
        }' "$out/threads.before" "$out/threads.after"
    awk -v a="$cpu0" -v b="$cpu1" -v reqs="$reqs" -v secs="$secs" 'BEGIN {
        printf "  whole process (counts threads that exited): %.2f cpu s = %.2f cores; %.1f us per request\n",
            b - a, (b - a) / secs, (b - a) / reqs * 1e6 }'

    if [[ -s "$out/perf.data" ]]; then
        echo
        echo "perf: share of samples by thread and library:"
        perf report -i "$out/perf.data" --no-children --sort comm,dso --stdio -g none 2>/dev/null \
            | grep -v -e '^#' -e '^$' | head -n 12 || true
        echo
        echo "perf: top symbols (self time):"
        perf report -i "$out/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null \
            | grep -v -e '^#' -e '^$' | head -n 25 || true
    fi
    echo
    echo "resident memory by mapping at the end (KiB, top 8):"
    awk '/^[0-9a-f]+-[0-9a-f]+ / { name = ($6 == "") ? "[anon]" : $6 }
         /^Rss:/ { rss[name] += $2 }
         END { for (k in rss) if (rss[k] > 0) printf "  %8d  %s\n", rss[k], k }' "/proc/$APP_PID/smaps" \
        | sort -rn | head -n 8 || true
} | tee "$out/summary.txt"
