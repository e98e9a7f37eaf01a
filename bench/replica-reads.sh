#!/usr/bin/env bash
# Read replicas: how much read load moves off the PostgreSQL primary with 0, 1 and 2 streaming replicas.
# (Two cores cannot show throughput scaling honestly: every server shares them. What this shows is the
# share of reads the replicas serve and the primary's CPU time per 1,000 reads.)
#
#   bash bench/replica-reads.sh                  # 15 s per measured phase
#   DURATION=8s bash bench/replica-reads.sh
#
# Starts its own cluster with scripts/pg-cluster.sh (a primary and 2 replicas on free loopback ports),
# seeds 100,000 products on the primary, then for 0, 1 and 2 replicas: one `tenfold app --no-cache` (every
# read reaches a database) -> warm-up (WARMUP) -> wrk random product reads (DURATION), with the primary's CPU
# (postmaster and its backends, from /proc) and the app's `db_reads_total{server}` taken before and after.
# Raw output under bench/results/. The cluster is destroyed on exit.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-15s}"
WARMUP="${WARMUP:-3s}"
THREADS="${THREADS:-2}"
CONNECTIONS="${CONNECTIONS:-64}"
PRODUCTS="${PRODUCTS:-100000}"

bench_ensure_wrk
command -v curl >/dev/null 2>&1 || bench_die "curl is required"
secs="$(bench_seconds "$DURATION")"
wrk_timeout=$((secs + 60))
bench_mktemp
work="$BENCH_TMP"
bin="$(bench_copy_binary "$work")"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="$(mktemp -d "$RESULTS_DIR/replica-reads-$stamp.XXXX")"
cluster="/tmp/tenfold-bench-pgc-$stamp-$$"
trap 'bash "$REPO_ROOT/scripts/pg-cluster.sh" destroy --dir "$cluster" >/dev/null 2>&1 || true; bench_cleanup' EXIT
bench_machine | tee "$out/machine.txt" >&2

bench_log "starting a primary and 2 replicas"
bash "$REPO_ROOT/scripts/pg-cluster.sh" start --dir "$cluster" --port auto --replicas 2 --shards 0 >"$out/cluster.env"
primary="$(sed -n 's/^TENFOLD_DATABASE_URL=//p' "$out/cluster.env")"
IFS=, read -r -a replicas <<<"$(sed -n 's/^TENFOLD_REPLICA_URLS=//p' "$out/cluster.env")"
bench_log "seeding $PRODUCTS products on the primary"
"$bin" seed --products "$PRODUCTS" --database-url "$primary" >"$out/seed.txt" 2>"$out/seed.stderr"
for r in "${replicas[@]}"; do
    for ((i = 0; i < 300; i++)); do
        n="$(psql "$r" -Atc 'SELECT count(*) FROM products' 2>/dev/null || echo 0)"
        [[ "$n" == "$PRODUCTS" ]] && break
        sleep 0.1
    done
    [[ "$n" == "$PRODUCTS" ]] || bench_die "replica $r did not catch up"
done

server_cpu() { bench_pg_cpu "$cluster" "$1"; }

reads_by() { # reads_by BASE -> "primary N" and "replica N" lines summed
    curl -sS --max-time 5 "$1/metrics" | awk '
        /^db_reads_total\{server="primary"\}/ { p += $2 }
        /^db_reads_total\{server="[0-9.]+:[0-9]+"\}/ { r += $2 }
        END { printf "%d %d\n", p, r }'
}

rows=()
for n in 0 1 2; do
    args=(--no-cache)
    for ((i = 0; i < n; i++)); do args+=(--replica-url "${replicas[$i]}"); done
    mkdir -p "$work/app-$n"
    bench_start_app "$bin" "$primary" "$work/app-$n" "${args[@]}"
    base="http://$APP_ADDR"
    sleep 1 # the replica monitor's first samples
    bench_log "$n replica(s): app on $APP_ADDR"
    timeout --foreground "$wrk_timeout" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -s "$BENCH_DIR/random-product.lua" "$base" -- "$PRODUCTS" >/dev/null
    read -r p0 r0 < <(reads_by "$base")
    c0="$(server_cpu primary)"
    q0="$(server_cpu replica1)"
    s0="$(server_cpu replica2)"
    timeout --foreground "$wrk_timeout" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
        -s "$BENCH_DIR/random-product.lua" "$base" -- "$PRODUCTS" >"$out/reads-$n.txt" 2>&1
    c1="$(server_cpu primary)"
    q1="$(server_cpu replica1)"
    s1="$(server_cpu replica2)"
    read -r p1 r1 < <(reads_by "$base")
    bench_stop_pid "$APP_PID"
    rps="$(bench_wrk_field "$out/reads-$n.txt" rps)"
    reads=$(((p1 - p0) + (r1 - r0)))
    share="$(awk -v r="$((r1 - r0))" -v t="$reads" 'BEGIN { printf "%.1f", t ? 100 * r / t : 0 }')"
    cpu_per_1000="$(awk -v a="$c0" -v b="$c1" -v t="$reads" 'BEGIN { printf "%.1f", t ? (b - a) * 1000 * 1000 / t : 0 }')"
    rep_per_1000="$(awk -v a="$q0" -v b="$q1" -v c="$s0" -v d="$s1" -v t="$reads" 'BEGIN { printf "%.1f", t ? ((b - a) + (d - c)) * 1000 * 1000 / t : 0 }')"
    rows+=("| $n | $(printf '%.0f' "$rps") | $reads | $share % | $cpu_per_1000 ms | $rep_per_1000 ms | $(bench_wrk_field "$out/reads-$n.txt" p50) / $(bench_wrk_field "$out/reads-$n.txt" p99) ms | $(bench_wrk_field "$out/reads-$n.txt" non2xx) |")
done

{
    echo
    echo "== replica-reads ($stamp; wrk -t$THREADS -c$CONNECTIONS -d$DURATION; random product reads, cache off) =="
    echo
    echo "| Replicas | Reads/s | Database reads | Served by replicas | Primary CPU per 1,000 reads | Replicas' CPU per 1,000 reads | p50 / p99 | non-2xx |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
    printf '%s\n' "${rows[@]}"
    echo
    echo "raw output: ${out#"$REPO_ROOT"/}"
} | tee "$out/summary.md"
