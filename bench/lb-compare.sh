#!/usr/bin/env bash
# Load balancer comparison: `tenfold lb` against nginx and HAProxy (Debian packages), side by side in
# one run, round robin over the same two loopback backends.
#
#   bash bench/lb-compare.sh                                  # 15 s per wrk phase, order below
#   DURATION=10s bash bench/lb-compare.sh                     # shorter phases
#   ORDER="tenfold nginx" bash bench/lb-compare.sh            # other order / subset
#   PROFILE=1 bash bench/lb-compare.sh                        # also perf-profile the first run of each
#   PROFILE=tenfold bash bench/lb-compare.sh                  # balancer (or only of those listed)
#   SYSCALLS=1 bash bench/lb-compare.sh                       # also CPU/syscalls/context switches per
#                                                             # request of each balancer (perf stat)
#
# Backends: two nginx instances (1 worker each) that answer every path, /healthz included, with a
# 100-byte 200 (`return 200`), keep-alive. The same two serve all three balancers.
# Balancers (each started by this script, with its own config in a temp dir, never as a service):
#   nginx    2 workers, upstream keepalive 64, proxy_http_version 1.1, Connection "", access_log off
#   haproxy  nbthread 2, mode http, balance roundrobin, http-reuse always, http-keep-alive, no logs,
#            health checks GET /healthz every 1 s (like tenfold's)
#   tenfold  `tenfold lb --algorithm round-robin` (health checks GET /healthz every 1 s, built in)
# Per balancer and run: warm-up wrk (WARMUP, discarded) -> wrk -t2 -c64 -d$DURATION --latency on / ->
# RSS after load -> 1,000 idle keep-alive client connections (one GET each, kept open) -> RSS.
# For tenfold the balancer-added latency histogram (lb_added_latency_seconds) and the backend latency
# histogram of the measured wrk phase are taken from the admin API (difference of two scrapes).
# RSS of nginx/haproxy is the sum of VmRSS over master + workers (PSS too, which counts shared pages
# once). The CPU of both backends and of the whole machine (/proc/stat) is read around each measured
# phase too, and the summary splits each request's CPU into balancer, backends and the rest (wrk).
# Goals: throughput >= 1.1x nginx and >= 1.0x HAProxy, p99 <= nginx's, RSS <= 20 MiB with 1,000
# open client connections. STRICT=1 makes the script exit 2 when a goal is missed.
# Several runs of one binary pool with: python3 bench/lb-compare-helper.py pool bench/results/lb-compare-*
#
# Before each measurement the script waits (up to 10 min) until no rustc/cargo runs (nor a wrk of
# another benchmark), and a sampler records whether one started during a measurement anyway; a wrk
# phase that such load overlapped is repeated, up to MAX_TRIES (default 3) times in all, and the
# table shows any overlap that remained.
# Everything binds to 127.0.0.1, every step is bounded with timeout, and on exit only the processes
# this script started are stopped.
# nginx, haproxy and wrk are installed with apt-get if missing (service start-up suppressed with
# policy-rc.d; a service the package started anyway is stopped). Raw output: bench/results/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$BENCH_DIR/lb-compare-lib.sh"

DURATION="${DURATION:-15s}"
WARMUP="${WARMUP:-3s}"
THREADS="${THREADS:-2}"
CONNECTIONS="${CONNECTIONS:-64}"
HOLD_CONNS="${HOLD_CONNS:-1000}"
ORDER="${ORDER:-nginx haproxy tenfold tenfold haproxy nginx}"
PROFILE="${PROFILE:-0}"
SYSCALLS="${SYSCALLS:-0}"
PROFILE_SECONDS="${PROFILE_SECONDS:-10}"
MAX_TRIES="${MAX_TRIES:-3}"
MIN_VS_NGINX=1.10
MIN_VS_HAPROXY=1.00
MAX_RSS_MIB=20
ADMIN_TOKEN="admin-token-0123456789"

for kind in $ORDER; do
    case "$kind" in nginx | haproxy | tenfold) ;; *) bench_die "unknown balancer '$kind' in ORDER" ;; esac
done

trap lbc_cleanup EXIT
lbc_ensure_tools
command -v curl >/dev/null 2>&1 || bench_die "curl is required"
PYTHON="$(command -v python3)" || bench_die "python3 is required"

# 1,000 client sockets + the balancer's own + wrk's: raise the soft limit for us and our children.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(($(ulimit -n) >= 4096)) || bench_die "ulimit -n is $(ulimit -n); need at least 4096"

secs="$(bench_seconds "$DURATION")"
wrk_timeout=$((secs + 60))

bench_mktemp
work="$BENCH_TMP"
chmod 755 "$work" # nginx workers run as nobody when we are root
bin="$(bench_copy_binary "$work")"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$RESULTS_DIR"
# Unique even when two runs start in the same second.
out="$(mktemp -d "$RESULTS_DIR/lb-compare-$stamp.XXXX")"
LBC_OUT="$out"

{
    bench_machine
    echo "nginx:  $(nginx -v 2>&1 | sed 's/^nginx version: //') (Debian $(lbc_pkg_version nginx))"
    echo "haproxy: $(haproxy -v 2>&1 | head -n1 | awk '{ print $3 }') (Debian $(lbc_pkg_version haproxy))"
    echo "python: $("$PYTHON" --version 2>&1)"
    echo "binary: $(sha256sum "$bin" | cut -c1-16) (copy of ${TENFOLD_BIN:-target/release/tenfold}, built $(date -u -r "${TENFOLD_BIN:-$REPO_ROOT/target/release/tenfold}" '+%F %T UTC'))"
    echo "git:    $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO_ROOT" diff --quiet -- crates 2>/dev/null || echo ' (crates/ has uncommitted changes)')"
    echo "load:   wrk -t$THREADS -c$CONNECTIONS -d$DURATION --timeout 10s --latency http://BALANCER/ (after a $WARMUP warm-up); hold $HOLD_CONNS connections"
    echo "order:  $ORDER"
} | tee "$out/machine.txt" >&2

lbc_start_compile_monitor

# --- backends ------------------------------------------------------------------------------------
b1_port="$(lbc_free_port)"
b2_port="$(lbc_free_port)"
[[ "$b1_port" != "$b2_port" ]] || b2_port="$(lbc_free_port)"
lbc_start_backend 1 "$b1_port"
lbc_start_backend 2 "$b2_port"
bench_log "backends: 127.0.0.1:$b1_port (pid ${LBC_BACKEND_PIDS[0]}), 127.0.0.1:$b2_port (pid ${LBC_BACKEND_PIDS[1]})"

printf 'kind\trun\trps\tp50_ms\tp99_ms\terrors\tnon2xx\trequests\tcpu_s\trss_load_kib\tpss_load_kib\trss_hold_kib\tpss_hold_kib\thold_open\thold_failed\tcompile_overlap_wrk_hold\twrk_tries\tbackends_cpu_s\tmachine_cpu_s\n' >"$out/runs.tsv"

run=0
for kind in $ORDER; do
    run=$((run + 1))
    lbc_measure "$kind" "$run"
done

lbc_summary | tee "$out/summary.md"
bench_log "raw output in $out"

if [[ "${STRICT:-0}" == 1 && "$(cat "$out/goals-missed")" != 0 ]]; then
    exit 2
fi
