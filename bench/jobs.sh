#!/usr/bin/env bash
# No-op jobs from enqueue to completion: tenfold's queue on PostgreSQL and SQLite, side by side with
# graphile-worker (npm) on the same PostgreSQL.
#
#   bash bench/jobs.sh                         # 10,000 jobs, concurrency 8
#   JOBS=2000 CONCURRENCY=16 bash bench/jobs.sh
#   GRAPHILE=0 bash bench/jobs.sh              # without graphile-worker (no npm needed)
#
# Each run: a fresh database; one worker already running and idle (`tenfold worker --concurrency C`, or a
# graphile-worker runner with the same concurrency); then one producer enqueues JOBS no-op jobs one at a
# time on one connection (`tenfold jobs enqueue --count`, or graphile-worker's `addJob`), and the clock runs
# from the first enqueue to the last completion. Reports jobs/s per backend and the ratio to
# graphile-worker. PostgreSQL is the machine's shared server (127.0.0.1:5432, PGURL to change).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

JOBS="${JOBS:-10000}"
CONCURRENCY="${CONCURRENCY:-8}"
GRAPHILE="${GRAPHILE:-1}"
PGURL="${PGURL:-postgres://postgres@127.0.0.1:5432/postgres}"

command -v psql >/dev/null 2>&1 || bench_die "psql is required"
bench_mktemp
work="$BENCH_TMP"
bin="$(bench_copy_binary "$work")"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="$(mktemp -d "$RESULTS_DIR/jobs-$stamp.XXXX")"
bench_machine | tee "$out/machine.txt" >&2
dbs=()
cleanup_dbs() {
    for d in "${dbs[@]}"; do psql "$PGURL" -qc "DROP DATABASE IF EXISTS $d" >/dev/null 2>&1 || true; done
    bench_cleanup
}
trap cleanup_dbs EXIT

fresh_pg() { # prints the URL of a new database
    local name="tenfold_bench_jobs_$1_$$"
    psql "$PGURL" -qc "CREATE DATABASE $name" >/dev/null
    dbs+=("$name")
    echo "${PGURL%/*}/$name"
}

now_ms() { date +%s%3N; }

# tenfold_run NAME DATABASE_URL: prints jobs/s.
tenfold_run() {
    local name="$1" db="$2" t0 t1 done_n pid
    "$bin" migrate --database-url "$db" >/dev/null 2>&1
    "$bin" worker --database-url "$db" --queues bench --concurrency "$CONCURRENCY" \
        >"$work/$name.worker.out" 2>"$work/$name.worker.err" &
    pid=$!
    bench_track_pid "$pid"
    for ((i = 0; i < 100; i++)); do [[ -s "$work/$name.worker.out" ]] && break; sleep 0.1; done
    [[ -s "$work/$name.worker.out" ]] || bench_die "the $name worker did not start"
    t0="$(now_ms)"
    "$bin" jobs enqueue --database-url "$db" --queue bench --kind noop --count "$JOBS" >"$work/$name.enqueue" 2>&1
    while :; do
        done_n="$("$bin" jobs stats --database-url "$db" 2>/dev/null | awk '$1 == "bench" { print $5 }')"
        [[ "${done_n:-0}" -ge "$JOBS" ]] && break
        sleep 0.02
    done
    t1="$(now_ms)"
    bench_stop_pid "$pid"
    "$bin" jobs stats --database-url "$db" >"$out/$name.stats.txt" 2>&1
    awk -v n="$JOBS" -v ms="$((t1 - t0))" 'BEGIN { printf "%.0f %.2f\n", n * 1000 / ms, ms / 1000 }'
}

bench_log "tenfold, PostgreSQL: $JOBS jobs, concurrency $CONCURRENCY"
read -r pg_rate pg_secs < <(tenfold_run postgres "$(fresh_pg tf)")
bench_log "tenfold, SQLite: $JOBS jobs, concurrency $CONCURRENCY"
read -r sq_rate sq_secs < <(tenfold_run sqlite "sqlite://$work/jobs.db")
gw_rate=""
if [[ "$GRAPHILE" == 1 ]]; then
    bench_log "graphile-worker, PostgreSQL: $JOBS jobs, concurrency $CONCURRENCY"
    line="$(bash "$BENCH_DIR/graphile/run.sh" "$(fresh_pg gw)" "$JOBS" "$CONCURRENCY" | tee "$out/graphile.txt" | tail -n1)"
    gw_rate="$(sed -n 's/.*jobs_per_s=\([0-9.]*\).*/\1/p' <<<"$line")"
    gw_secs="$(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' <<<"$line")"
fi

ratio() { [[ -n "$gw_rate" ]] && awk -v a="$1" -v b="$gw_rate" 'BEGIN { printf "%.2f×", a / b }' || echo "n/a"; }
{
    echo
    echo "== jobs ($stamp; $JOBS no-op jobs, concurrency $CONCURRENCY, one producer enqueueing one at a time) =="
    echo
    echo "| Backend | Seconds | Jobs/s | vs graphile-worker |"
    echo "|---|---:|---:|---:|"
    echo "| tenfold, PostgreSQL | $pg_secs | $pg_rate | $(ratio "$pg_rate") |"
    echo "| tenfold, SQLite | $sq_secs | $sq_rate | $(ratio "$sq_rate") |"
    [[ -n "$gw_rate" ]] && echo "| graphile-worker, PostgreSQL | $gw_secs | $gw_rate | 1.00× |"
    echo
    echo "raw output: ${out#"$REPO_ROOT"/}"
} | tee "$out/summary.md"
