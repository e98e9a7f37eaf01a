# shellcheck shell=bash
# Shared helpers for the tenfold benchmark scripts. Source it; do not run it.
#
# Everything here binds to loopback only, is bounded in time, and only ever signals processes whose
# pids it recorded itself (bench_track_pid); the EXIT trap stops those and removes the temp dirs it made.

set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$BENCH_DIR/.." && pwd)"
RESULTS_DIR="${RESULTS_DIR:-$BENCH_DIR/results}"
mkdir -p "$RESULTS_DIR"

_BENCH_PIDS=()
_BENCH_TMPDIRS=()

bench_log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
bench_die() { bench_log "error: $*"; exit 1; }

# Records a pid this script started, so cleanup can stop it (and nothing else).
bench_track_pid() { _BENCH_PIDS+=("$1"); }

# Stops one tracked process: SIGTERM, up to 10 s of grace, then SIGKILL.
bench_stop_pid() {
    local pid="$1" i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        bench_log "pid $pid ignored SIGTERM for 10 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

bench_cleanup() {
    local rc=$? pid dir
    trap - EXIT INT TERM
    for pid in "${_BENCH_PIDS[@]+"${_BENCH_PIDS[@]}"}"; do
        bench_stop_pid "$pid"
    done
    for dir in "${_BENCH_TMPDIRS[@]+"${_BENCH_TMPDIRS[@]}"}"; do
        [[ -n "$dir" && -d "$dir" ]] && rm -rf -- "$dir"
    done
    exit "$rc"
}
trap bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Makes a temp dir that is removed on exit (set KEEP_TMP=1 to keep it) and stores its path in
# BENCH_TMP. (Not a $(...) function: the path must be recorded in this shell, not a subshell.)
bench_mktemp() {
    BENCH_TMP="$(mktemp -d "${TMPDIR:-/tmp}/tenfold-bench.XXXXXX")"
    if [[ "${KEEP_TMP:-0}" != 1 ]]; then _BENCH_TMPDIRS+=("$BENCH_TMP"); fi
}

# Installs wrk from the Debian archive if it is missing.
bench_ensure_wrk() {
    command -v wrk >/dev/null 2>&1 && return 0
    bench_log "wrk not found; installing it with apt-get"
    local sudo=()
    [[ "$(id -u)" == 0 ]] || sudo=(sudo)
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y wrk >&2; then
        "${sudo[@]}" apt-get update >&2
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y wrk >&2
    fi
    command -v wrk >/dev/null 2>&1 || bench_die "wrk is still missing after apt-get install"
}

# Copies the release binary into DIR (so a rebuild cannot swap it mid-run); prints the copy's path.
bench_copy_binary() {
    local dir="$1" src="${TENFOLD_BIN:-$REPO_ROOT/target/release/tenfold}"
    [[ -x "$src" ]] || bench_die "no release binary at $src; run 'cargo build --release' first"
    cp -- "$src" "$dir/tenfold"
    printf '%s\n' "$dir/tenfold"
}

# Converts a duration like 20s, 2m, 500ms or 30 to whole seconds (rounded up).
bench_seconds() {
    local d="$1"
    case "$d" in
        *ms) echo $(( (${d%ms} + 999) / 1000 )) ;;
        *s) echo "${d%s}" ;;
        *m) echo $(( ${d%m} * 60 )) ;;
        *h) echo $(( ${d%h} * 3600 )) ;;
        *) echo "$d" ;;
    esac
}

# bench_start_app BIN DATABASE_URL WORKDIR [EXTRA ARGS...]
# Starts `tenfold app` on 127.0.0.1:0 in the background and waits (up to 30 s) for the one line it
# prints on stdout. Sets APP_PID and APP_ADDR. Logs go to WORKDIR/app.stderr.
bench_start_app() {
    local bin="$1" url="$2" dir="$3" i
    shift 3
    : >"$dir/app.stdout"
    "$bin" app --listen 127.0.0.1:0 --database-url "$url" "$@" >"$dir/app.stdout" 2>"$dir/app.stderr" &
    APP_PID=$!
    bench_track_pid "$APP_PID"
    APP_ADDR=""
    for ((i = 0; i < 300; i++)); do
        if [[ -s "$dir/app.stdout" ]]; then
            APP_ADDR="$(head -n1 "$dir/app.stdout" | tr -d '[:space:]')"
            [[ -n "$APP_ADDR" ]] && break
        fi
        if ! kill -0 "$APP_PID" 2>/dev/null; then
            cat "$dir/app.stderr" >&2 || true
            bench_die "the app exited before printing its address"
        fi
        sleep 0.1
    done
    [[ -n "$APP_ADDR" ]] || bench_die "the app printed no address within 30 s"
    case "$APP_ADDR" in
        127.0.0.1:*) ;;
        *) bench_die "the app bound to $APP_ADDR, not loopback" ;;
    esac
}

# bench_start_up BIN WORKDIR OUTPREFIX [NAME=VALUE ...] -- [UP ARGS ...]
# Starts `tenfold up --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 UP ARGS` in WORKDIR (its data under
# WORKDIR/data) with the environment additions, logs to OUTPREFIX.stdout/.stderr, waits (up to 60 s) for it to
# be ready, then lists its instances. Sets UP_PID, UP_URL, UP_ADMIN, UP_TOKEN and UP_INSTANCES.
bench_start_up() {
    local bin="$1" dir="$2" prefix="$3" i
    shift 3
    local env=()
    while (($#)) && [[ "$1" != "--" ]]; do
        env+=("$1")
        shift
    done
    [[ "${1:-}" == "--" ]] && shift
    mkdir -p "$dir"
    (
        cd "$dir"
        exec env "${env[@]}" "$bin" up --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 "$@" \
            >"$prefix.stdout" 2>"$prefix.stderr"
    ) &
    UP_PID=$!
    bench_track_pid "$UP_PID"
    for ((i = 0; i < 600; i++)); do
        [[ -s "$dir/data/up.json" ]] && grep -q "admin API" "$prefix.stdout" 2>/dev/null && break
        kill -0 "$UP_PID" 2>/dev/null || { cat "$prefix.stderr" >&2; bench_die "tenfold up exited"; }
        sleep 0.1
    done
    read -r UP_URL UP_ADMIN UP_TOKEN < <(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s["url"], s["admin"], s["admin_token"])' "$dir/data/up.json")
    sleep 2
    bench_up_instances
}

# Sets UP_INSTANCES to the instances (http://ADDR) a running `tenfold up` lists (UP_ADMIN, UP_TOKEN).
bench_up_instances() {
    mapfile -t UP_INSTANCES < <(curl -sS --max-time 5 -H "authorization: Bearer $UP_TOKEN" "$UP_ADMIN/instances" |
        python3 -c 'import json,sys; [print("http://" + i["addr"]) for i in json.load(sys.stdin)["instances"]]')
}

# Prints a /proc/PID/status field (VmRSS, VmHWM, RssAnon, RssFile...) in KiB.
bench_status_kib() {
    local pid="$1" field="$2"
    awk -v f="$field:" '$1 == f { print $2; found = 1 } END { if (!found) exit 1 }' "/proc/$pid/status"
}

# Prints the resident set size of PID in KiB.
bench_rss_kib() { bench_status_kib "$1" VmRSS; }

# Prints KiB as MiB with one decimal.
bench_mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# Prints the user+system CPU time of PID so far, in seconds.
bench_cpu_seconds() {
    local pid="$1" tck
    tck="$(getconf CLK_TCK)"
    # Fields 14 and 15 of /proc/PID/stat, counted after the ")" that closes the command name.
    awk -v t="$tck" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / t }' "/proc/$pid/stat"
}

# bench_pg_cpu CLUSTER_DIR SERVER: CPU seconds of one server of a scripts/pg-cluster.sh cluster (primary,
# replica1, shard1...): the postmaster (with its reaped children) plus its live backends.
bench_pg_cpu() {
    local pm tck
    pm="$(head -n1 "$1/$2/postmaster.pid")"
    tck="$(getconf CLK_TCK)"
    {
        awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$pm/stat"
        for c in $(pgrep -P "$pm"); do awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$c/stat" 2>/dev/null || true; done
    } | awk -v t="$tck" '{ s += $1 } END { printf "%.3f\n", s / t }'
}

# bench_wrk_field FILE what: reads a wrk --latency report.
#   rps            Requests/sec
#   p50|p75|p90|p99 latency percentile in milliseconds
#   requests       total requests completed
#   non2xx         "Non-2xx or 3xx responses" (0 when absent)
#   errors         socket errors, summed (0 when absent)
bench_wrk_field() {
    local file="$1" what="$2"
    case "$what" in
        rps) awk '/^Requests\/sec:/ { print $2 }' "$file" ;;
        requests) awk '/requests in/ { print $1 }' "$file" ;;
        non2xx) awk '/Non-2xx or 3xx responses:/ { n = $NF } END { print n + 0 }' "$file" ;;
        errors)
            awk '/Socket errors:/ { gsub(/,/, ""); for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+$/) s += $i }
                 END { print s + 0 }' "$file" ;;
        p50 | p75 | p90 | p99)
            awk -v p="${what#p}%" '
                /Latency Distribution/ { in_dist = 1; next }
                in_dist && $1 == p {
                    v = $2
                    if (v ~ /us$/) { sub(/us$/, "", v); v = v / 1000 }
                    else if (v ~ /ms$/) { sub(/ms$/, "", v); v = v + 0 }
                    else if (v ~ /m$/) { sub(/m$/, "", v); v = v * 60000 }
                    else if (v ~ /s$/) { sub(/s$/, "", v); v = v * 1000 }
                    printf "%.2f\n", v; exit
                }' "$file" ;;
        *) bench_die "unknown wrk field $what" ;;
    esac
}

# Prints a few lines describing the machine, for the record.
bench_machine() {
    echo "date:   $(date -u)"
    echo "nproc:  $(nproc)"
    echo "cpu:    $(lscpu 2>/dev/null | awk -F: '/Model name/ { gsub(/^[ \t]+/, "", $2); print $2; exit }')"
    echo "memory: $(free -g | awk '/^Mem:/ { print $2 " GiB total, " $7 " GiB available" }')"
    echo "kernel: $(uname -sr)"
    echo "wrk:    $(wrk -v 2>&1 | head -n1 | awk '{ print $1, $2 }')"
}
