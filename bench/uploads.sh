#!/usr/bin/env bash
# Upload answer latency while the background workers are saturated: one `tenfold app` and one worker
# (concurrency 2) on a SQLite database; the worker is first given a backlog of 2,000 jobs of 50 ms, then wrk
# POSTs a 64 KiB PNG of random pixels to /api/products/1/media for DURATION (each upload also queues an image job). The
# answer (202) must not wait for processing: its p50/p99 are compared with the same run's GET /healthz.
#
#   bash bench/uploads.sh
#   DURATION=5s CONNECTIONS=8 bash bench/uploads.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-16}"
KEY="bench-api-key-0123456789"

bench_ensure_wrk
command -v python3 >/dev/null 2>&1 || bench_die "python3 is required"
secs="$(bench_seconds "$DURATION")"
bench_mktemp
work="$BENCH_TMP"
bin="$(bench_copy_binary "$work")"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="$(mktemp -d "$RESULTS_DIR/uploads-$stamp.XXXX")"
bench_machine | tee "$out/machine.txt" >&2
export TENFOLD_API_KEY="$KEY" TENFOLD_MEDIA__DIR="$work/blobs"
db="sqlite://$work/tenfold.db"

"$bin" seed --products 10 --database-url "$db" >/dev/null 2>"$work/seed.stderr"
# A 64 KiB PNG of random pixels (noise does not compress).
python3 - "$work/upload.png" <<'PY'
import random, struct, sys, zlib
w, h = 160, 136
raw = b"".join(b"\x00" + bytes(random.getrandbits(8) for _ in range(w * 3)) for _ in range(h))
def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
open(sys.argv[1], "wb").write(png)
PY
size="$(stat -c %s "$work/upload.png")"
"$bin" jobs enqueue --database-url "$db" --queue media --kind noop --args '{"sleep_ms": 50}' --count 2000 >/dev/null 2>&1
bench_start_app "$bin" "$db" "$work"
base="http://$APP_ADDR"
"$bin" worker --database-url "$db" --queues media --concurrency 2 >"$work/worker.out" 2>"$work/worker.err" &
wpid=$!
bench_track_pid "$wpid"
sleep 1
bench_log "app on $APP_ADDR; worker saturated with a backlog; uploading $size-byte images"
timeout --foreground $((secs + 60)) wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency \
    -s "$BENCH_DIR/upload.lua" "$base" -- "$work/upload.png" "$KEY" >"$out/uploads.txt" 2>&1
"$bin" jobs stats --database-url "$db" >"$out/stats-after-uploads.txt" 2>&1
timeout --foreground $((secs + 60)) wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency \
    "$base/healthz" >"$out/healthz.txt" 2>&1
running="$(awk '$1 == "media" { print $4 }' "$out/stats-after-uploads.txt")"
ready="$(awk '$1 == "media" { print $2 }' "$out/stats-after-uploads.txt")"
bench_stop_pid "$wpid"
bench_stop_pid "$APP_PID"
{
    echo
    echo "== uploads ($stamp; wrk -t2 -c$CONNECTIONS -d$DURATION; $size-byte image; one worker of 2, saturated) =="
    echo
    echo "| Request | Requests/s | p50 | p99 | non-2xx |"
    echo "|---|---:|---:|---:|---:|"
    echo "| POST /api/products/1/media (202) | $(printf '%.0f' "$(bench_wrk_field "$out/uploads.txt" rps)") | $(bench_wrk_field "$out/uploads.txt" p50) ms | $(bench_wrk_field "$out/uploads.txt" p99) ms | $(bench_wrk_field "$out/uploads.txt" non2xx) |"
    echo "| GET /healthz (same app, after) | $(printf '%.0f' "$(bench_wrk_field "$out/healthz.txt" rps)") | $(bench_wrk_field "$out/healthz.txt" p50) ms | $(bench_wrk_field "$out/healthz.txt" p99) ms | $(bench_wrk_field "$out/healthz.txt" non2xx) |"
    echo
    echo "queue after the uploads: $ready ready, $running running (the worker stayed saturated)"
    echo "raw output: ${out#"$REPO_ROOT"/}"
} | tee "$out/summary.md"
