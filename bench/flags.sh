#!/usr/bin/env bash
# Flag propagation: how long a flag change takes to reach every instance. Three `tenfold app` processes on one
# database; CHANGES times, one instance's admin API flips a flag and all three are polled (every 2 ms) until
# they serve the new change number; p50/p99/max per engine.
#
#   bash bench/flags.sh                 # 100 changes, SQLite and PostgreSQL
#   CHANGES=20 ENGINES=sqlite bash bench/flags.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CHANGES="${CHANGES:-100}"
ENGINES="${ENGINES:-sqlite postgres}"
PGURL="${PGURL:-postgres://postgres@127.0.0.1:5432/postgres}"
KEY="bench-api-key-0123456789"
bench_mktemp
work="$BENCH_TMP"
bin="$(bench_copy_binary "$work")"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="$(mktemp -d "$RESULTS_DIR/flags-$stamp.XXXX")"
bench_machine | tee "$out/machine.txt" >&2
pgdb=""
cleanup_all() {
    bench_cleanup
    [[ -n "$pgdb" ]] && psql "$PGURL" -qc "DROP DATABASE IF EXISTS $pgdb WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup_all EXIT
export TENFOLD_API_KEY="$KEY" TENFOLD_MEDIA__DIR="$work/blobs"

for engine in $ENGINES; do
    case "$engine" in
        sqlite) url="sqlite://$work/flags.db" ;;
        postgres)
            pgdb="tenfold_bench_flags_$(date +%s)_$$"
            psql "$PGURL" -qc "CREATE DATABASE $pgdb" >/dev/null
            url="${PGURL%/*}/$pgdb"
            ;;
        *) bench_die "unknown engine $engine" ;;
    esac
    "$bin" migrate --database-url "$url" >/dev/null 2>&1
    addrs=()
    for i in 1 2 3; do
        mkdir -p "$work/$engine-$i"
        bench_start_app "$bin" "$url" "$work/$engine-$i"
        addrs+=("http://$APP_ADDR")
    done
    python3 - "$CHANGES" "$KEY" "${addrs[@]}" >"$out/$engine.json" <<'PY'
import json, sys, time, urllib.request
n, key, addrs = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
def call(method, url, body=None):
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read() or b"{}")
version = lambda a: call("GET", f"{a}/api/admin/flags")["version"]
samples = []
for i in range(n):
    target = version(addrs[0]) + 1
    t0 = time.monotonic()
    call("PUT", f"{addrs[0]}/api/admin/flags/search", {"enabled": i % 2 == 1, "note": "bench"})
    for a in addrs:
        while version(a) < target:
            if time.monotonic() - t0 > 10:
                raise SystemExit(f"{a} never reached change {target}")
            time.sleep(0.002)
        samples.append((time.monotonic() - t0) * 1000)
    time.sleep(0.05 + (i % 7) * 0.013)  # changes land at different points of the refresh cycle
s = sorted(samples)
pct = lambda p: s[min(len(s) - 1, int(p * len(s)))]
print(json.dumps({"changes": n, "instances": len(addrs), "samples": len(s), "p50_ms": pct(0.5),
                  "p99_ms": pct(0.99), "max_ms": s[-1]}))
PY
    bench_log "$engine: $(cat "$out/$engine.json")"
    for pid in "${_BENCH_PIDS[@]}"; do bench_stop_pid "$pid"; done
done
{
    echo
    echo "== flag propagation ($stamp; $CHANGES changes, 3 instances, 100 ms refresh) =="
    echo
    echo "| Engine | Samples | p50 (ms) | p99 (ms) | max (ms) |"
    echo "|---|---:|---:|---:|---:|"
    for engine in $ENGINES; do
        python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("| %s | %d | %.0f | %.0f | %.0f |" % (sys.argv[2], r["samples"], r["p50_ms"], r["p99_ms"], r["max_ms"]))' "$out/$engine.json" "$engine"
    done
    echo
    echo "raw output: ${out#"$REPO_ROOT"/}"
} | tee "$out/summary.md"
