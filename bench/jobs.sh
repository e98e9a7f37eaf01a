#!/usr/bin/env bash
# No-op jobs from enqueue to completion: tenfold's queue on PostgreSQL and SQLite, each dispatching by
# itself and through NATS JetStream (the outbox in the database, NATSURL), side by side with
# graphile-worker (npm; bench/graphile/run.sh) on the same PostgreSQL, in two shapes:
#   drain: JOBS jobs already queued, then one worker starts; timed from its start to the last completion
#          (what the queue itself sustains: claims, completions, wake-ups);
#   flow:  one worker running and idle; one producer enqueues JOBS jobs one at a time on one connection;
#          timed from the first enqueue to the last completion (bounded by the producer's commits).
#
#   bash bench/jobs.sh                           # 10,000 jobs, concurrency 8, 3 rounds, medians
#   JOBS=2000 ROUNDS=1 bash bench/jobs.sh
#   GRAPHILE=0 bash bench/jobs.sh                # without graphile-worker (no node needed)
#   NATS=0 bash bench/jobs.sh                    # without the NATS backends
#
# The backends run in turn within each round, so the machine's noise (a shared disk: every commit is an
# fsync) falls on all of them alike. PostgreSQL is the shared server (PGURL to change); each run gets a
# fresh database.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

JOBS="${JOBS:-10000}"
CONCURRENCY="${CONCURRENCY:-8}"
ROUNDS="${ROUNDS:-3}"
GRAPHILE="${GRAPHILE:-1}"
PGURL="${PGURL:-postgres://postgres@127.0.0.1:5432/postgres}"
NATS="${NATS:-1}"
NATSURL="${NATSURL:-nats://127.0.0.1:4222}"

command -v psql >/dev/null 2>&1 || bench_die "psql is required"
bench_mktemp
work="$BENCH_TMP"
bin="$(bench_copy_binary "$work")"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="$(mktemp -d "$RESULTS_DIR/jobs-$stamp.XXXX")"
bench_machine | tee "$out/machine.txt" >&2
# fresh_pg runs in $(...) subshells: the names it makes are kept in a file for the clean-up.
: >"$work/dbs"
cleanup_dbs() {
    while read -r d; do psql "$PGURL" -qc "DROP DATABASE IF EXISTS $d" >/dev/null 2>&1 || true; done <"$work/dbs"
    bench_cleanup
}
trap cleanup_dbs EXIT
fresh_pg() { # prints the URL of a new database
    local name="tenfold_bench_jobs_$(date +%s%N)_$$"
    echo "$name" >>"$work/dbs"
    psql "$PGURL" -qc "CREATE DATABASE $name" >/dev/null
    echo "${PGURL%/*}/$name"
}
now_ms() { date +%s%3N; }
done_count() { "$bin" jobs stats --database-url "$1" 2>/dev/null | awk '$1 == "bench" { print $5 }'; }

# tenfold_run MODE DATABASE_URL [nats]: prints seconds. With nats, every process dispatches through
# JetStream (stream BENCH_JOBS, subjects bench.jobs.*; each run drains it, so runs do not meet).
tenfold_run() {
    local mode="$1" db="$2" t0 t1 pid log="$work/worker-$RANDOM$RANDOM"
    if [[ "${3:-}" == nats ]]; then
        export TENFOLD_NATS_URL="$NATSURL" TENFOLD_JOBS__NATS_STREAM=BENCH_JOBS TENFOLD_JOBS__NATS_SUBJECT_PREFIX=bench.jobs
    else
        unset TENFOLD_NATS_URL TENFOLD_JOBS__NATS_STREAM TENFOLD_JOBS__NATS_SUBJECT_PREFIX
    fi
    "$bin" migrate --database-url "$db" >/dev/null 2>&1
    enqueue() { "$bin" jobs enqueue --database-url "$db" --queue bench --kind noop --count "$JOBS" >/dev/null 2>&1; }
    [[ "$mode" == drain ]] && enqueue
    t0="$(now_ms)"
    "$bin" worker --database-url "$db" --queues bench --concurrency "$CONCURRENCY" >"$log.out" 2>"$log.err" &
    pid=$!
    bench_track_pid "$pid"
    if [[ "$mode" == flow ]]; then
        for ((i = 0; i < 100; i++)); do [[ -s "$log.out" ]] && break; sleep 0.05; done
        [[ -s "$log.out" ]] || bench_die "the worker did not start"
        t0="$(now_ms)"
        enqueue
    fi
    while [[ "$(done_count "$db")" -lt "$JOBS" ]]; do sleep 0.01; done
    t1="$(now_ms)"
    bench_stop_pid "$pid"
    awk -v ms="$((t1 - t0))" 'BEGIN { printf "%.3f\n", ms / 1000 }'
}

graphile_run() { # graphile_run MODE: prints seconds
    MODE="$1" bash "$BENCH_DIR/graphile/run.sh" "$(fresh_pg)" "$JOBS" "$CONCURRENCY" 2>>"$out/graphile.stderr" |
        tee -a "$out/graphile.txt" | sed -n 's/.*seconds=\([0-9.]*\).*/\1/p'
}

declare -A secs
backends=("tenfold-postgres" "tenfold-sqlite")
[[ "$NATS" == 1 ]] && backends+=("tenfold-postgres-nats" "tenfold-sqlite-nats")
[[ "$GRAPHILE" == 1 ]] && backends+=("graphile-postgres")
for ((r = 1; r <= ROUNDS; r++)); do
    for mode in drain flow; do
        for b in "${backends[@]}"; do
            case "$b" in
                tenfold-postgres) s="$(tenfold_run "$mode" "$(fresh_pg)")" ;;
                tenfold-sqlite) s="$(tenfold_run "$mode" "sqlite://$work/jobs-$r-$mode.db")" ;;
                tenfold-postgres-nats) s="$(tenfold_run "$mode" "$(fresh_pg)" nats)" ;;
                tenfold-sqlite-nats) s="$(tenfold_run "$mode" "sqlite://$work/jobs-$r-$mode-nats.db" nats)" ;;
                graphile-postgres) s="$(graphile_run "$mode")" ;;
            esac
            [[ -n "$s" ]] || bench_die "$b $mode gave no figure"
            bench_log "round $r, $mode, $b: $s s"
            echo "$r $mode $b $s" >>"$out/runs.txt"
            secs["$mode $b"]+="$s "
        done
    done
done

median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
{
    echo
    echo "== jobs ($stamp; $JOBS no-op jobs, concurrency $CONCURRENCY, median of $ROUNDS rounds) =="
    echo
    echo "| Shape | Backend | Seconds (median) | Jobs/s | vs graphile-worker |"
    echo "|---|---|---:|---:|---:|"
    for mode in drain flow; do
        g=""
        [[ "$GRAPHILE" == 1 ]] && g="$(median "${secs["$mode graphile-postgres"]}")"
        for b in "${backends[@]}"; do
            m="$(median "${secs["$mode $b"]}")"
            rate="$(awk -v n="$JOBS" -v s="$m" 'BEGIN { printf "%.0f", n / s }')"
            vs="n/a"
            [[ -n "$g" ]] && vs="$(awk -v a="$m" -v b="$g" 'BEGIN { printf "%.2f×", b / a }')"
            echo "| $mode | $b | $m | $rate | $vs |"
        done
    done
    echo
    echo "raw output: ${out#"$REPO_ROOT"/}"
} | tee "$out/summary.md"
