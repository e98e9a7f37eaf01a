#!/usr/bin/env bash
# Overload: `tenfold up` (3 instances) on PostgreSQL, open-loop load at 1, 2, 3 and 5 times its capacity,
# with load shedding on and then off; and the time to degrade and to recover when 2 s of latency is
# injected into the database and then removed.
#
#   bash bench/overload.sh                  # 10 s per step
#   STEP=5 bash bench/overload.sh           # shorter steps
#
# The mix: 30% critical requests (a product by id: cached reads) and 70% degradable ones (a search for a
# random word: a database scan, never cached), sent by tenfold-loadgen at a fixed rate whatever the answers.
# Capacity is the throughput of the same mix with 64 connections back to back. The database is reached
# through tenfold-loadgen's delay proxy, so latency can be injected. Everything runs on this machine (the
# load generator included) and on loopback; PostgreSQL is the shared server (PGURL), a fresh database per run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STEP="${STEP:-10}"
PGURL="${PGURL:-postgres://postgres@127.0.0.1:5432/postgres}"
command -v psql >/dev/null 2>&1 || bench_die "psql is required"
bench_mktemp
work="$BENCH_TMP"
bin="$(bench_copy_binary "$work")"
lg_src="$REPO_ROOT/target/release/tenfold-loadgen"
[[ -x "$lg_src" ]] || bench_die "no $lg_src; run 'cargo build --release' first"
cp -- "$lg_src" "$work/loadgen"
lg="$work/loadgen"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="$(mktemp -d "$RESULTS_DIR/overload-$stamp.XXXX")"
bench_machine | tee "$out/machine.txt" >&2

db="tenfold_bench_overload_$(date +%s)_$$"
psql "$PGURL" -qc "CREATE DATABASE $db" >/dev/null
cleanup_all() {
    bench_cleanup
    psql "$PGURL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup_all EXIT

# The database, behind the delay proxy.
echo 0 >"$work/delay"
pg_hostport="${PGURL#*@}"
pg_hostport="${pg_hostport%%/*}"
"$lg" delay-proxy --upstream "$pg_hostport" --delay-file "$work/delay" >"$work/proxy.out" 2>"$work/proxy.err" &
bench_track_pid $!
for ((i = 0; i < 50; i++)); do [[ -s "$work/proxy.out" ]] && break; sleep 0.1; done
proxy="$(head -n1 "$work/proxy.out")"
[[ -n "$proxy" ]] || bench_die "the delay proxy did not start"
db_url="${PGURL%%@*}@$proxy/$db"

CRIT='{base}/api/products/{id}'
OTHER='{base}/api/products?q=w{rand}&limit=5'

start_up() { # start_up LABEL [ENV...]: sets UP_PID, LB, INSTANCES
    local label="$1"
    shift
    rm -rf "$work/up-$label"
    bench_start_up "$bin" "$work/up-$label" "$out/up-$label" "$@" -- \
        --instances 3 --min 3 --max 3 --workers 0 --database-url "$db_url"
    LB="$UP_URL"
    INSTANCES=("${UP_INSTANCES[@]}")
    ((${#INSTANCES[@]} == 3)) || bench_die "expected 3 instances, got ${#INSTANCES[@]}"
    bench_log "$label: tenfold up at $LB, instances ${INSTANCES[*]}"
}

open_run() { # open_run NAME RATE SECONDS
    "$lg" open --critical "${CRIT/\{base\}/$LB}" --other "${OTHER/\{base\}/$LB}" --rate "$2" \
        --critical-share 0.3 --duration "$3" --timeout 10 >"$out/$1.json"
    bench_log "$1 at $2 req/s: $(cat "$out/$1.json")"
}

max_step() { # the highest degradation step among the instances
    local m=0 s i
    for i in "${INSTANCES[@]}"; do
        s="$(curl -sS --max-time 1 "$i/metrics" 2>/dev/null | awk '$1 == "degradation_step" { print int($2) }')"
        [[ -n "$s" ]] && ((s > m)) && m="$s"
    done
    echo "$m"
}

# --- shedding on ---
start_up on
"$lg" closed --url "${CRIT/\{base\}/$LB}" --concurrency 16 --duration 3 >/dev/null # warm the caches
"$lg" closed --url "${CRIT/\{base\}/$LB}" --other "${OTHER/\{base\}/$LB}" --share 0.3 --concurrency 64 \
    --duration "$STEP" >"$out/capacity.json"
capacity="$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["goodput_rps"]))' "$out/capacity.json")"
bench_log "capacity: $capacity req/s ($(cat "$out/capacity.json"))"
open_run on-0.2x "$(awk -v c="$capacity" 'BEGIN { print c * 0.2 }')" "$STEP"
for k in 1 2 3 5; do
    open_run "on-${k}x" "$((capacity * k))" "$STEP"
done

# The steps above leave the instances degraded for a while: wait (up to 2 minutes) until all are at 0.
for ((i = 0; i < 1200; i++)); do (($(max_step) == 0)) && break; sleep 0.1; done
# Degrade and recover: load at half the capacity (nothing is shed before); 2 s of database latency from
# t=5 s to t=20 s.
"$lg" open --critical "${CRIT/\{base\}/$LB}" --other "${OTHER/\{base\}/$LB}" --rate "$((capacity / 2))" \
    --critical-share 0.3 --duration 35 --timeout 10 >"$out/latency.json" &
lg_pid=$!
bench_track_pid "$lg_pid"
sleep 5
echo "$(max_step)" >"$out/latency-step-before.txt"
# The instances log each step with its time; polling them under 2 s of database latency is unreliable.
date +%s%3N >"$out/latency-on.ms"
echo 2000 >"$work/delay"
sleep 15
date +%s%3N >"$out/latency-off.ms"
echo 0 >"$work/delay"
wait "$lg_pid" || true
for ((i = 0; i < 1200; i++)); do (($(max_step) == 0)) && break; sleep 0.1; done
bench_stop_pid "$UP_PID"

# --- shedding off: the same steps ---
start_up off TENFOLD_HTTP__LOAD_SHEDDING=false
"$lg" closed --url "${CRIT/\{base\}/$LB}" --concurrency 16 --duration 3 >/dev/null
open_run off-0.2x "$(awk -v c="$capacity" 'BEGIN { print c * 0.2 }')" "$STEP"
for k in 1 2 3 5; do
    open_run "off-${k}x" "$((capacity * k))" "$STEP"
done
bench_stop_pid "$UP_PID"

python3 - "$out" "$capacity" <<'PY' | tee "$out/summary.md"
import json, sys
out, cap = sys.argv[1], float(sys.argv[2])
print(f"\n== overload ({out.rsplit('/', 1)[-1]}; capacity {cap:.0f} req/s, 30% critical) ==\n")
print("| Shedding | Load | Critical sent | Critical served | Critical goodput / offered | Critical p99 (ms) | p99 vs unloaded | Other served | Other shed (503) | Other failed |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for mode in ("on", "off"):
    base = json.load(open(f"{out}/{mode}-0.2x.json"))["critical"]["p99_ms"]
    for k in ("0.2x", "1x", "2x", "3x", "5x"):
        r = json.load(open(f"{out}/{mode}-{k}.json"))
        c, o = r["critical"], r["other"]
        ratio = c["ok"] / max(c["sent"], 1)
        print(f"| {mode} | {k} | {c['sent']} | {c['ok']} | {ratio:.1%} | {c['p99_ms']:.1f} | {c['p99_ms'] / max(base, 1e-3):.2f}× | {o['ok']} | {o['shed']} | {o['failed']} |")
import re, datetime
on_ms = int(open(f"{out}/latency-on.ms").read())
off_ms = int(open(f"{out}/latency-off.ms").read())
steps = []
for line in open(f"{out}/up-on.stderr", errors="replace"):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    m = re.match(r"(\S+Z)\s+\S+\s+tenfold_app::shed: (degrading|recovering).*?step=(\d+)", line)
    if m:
        t = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp() * 1000
        steps.append((t, m.group(2), int(m.group(3))))
first = next((t for t, kind, s in steps if kind == "degrading" and t >= on_ms), None)
top = max((s for t, kind, s in steps if on_ms <= t <= off_ms), default=0)
last0 = max((t for t, kind, s in steps if kind == "recovering" and s == 0 and t >= off_ms), default=None)
before = open(f"{out}/latency-step-before.txt").read().strip()
d = f"{first - on_ms:.0f} ms" if first else "never"
r = f"{last0 - off_ms:.0f} ms" if last0 else "never"
print(f"\n2 s of database latency for 15 s under 0.5x load (step {before} before): the first instance degraded {d} after it began (up to step {top}); the last one was back at step 0 {r} after it ended (recover_after_ms = 10 s per step).")
print(f"\nraw output: {out}")
PY
