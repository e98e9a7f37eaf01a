# shellcheck shell=bash disable=SC2154
# Helpers for bench/lb-compare.sh. Source it after lib.sh; do not run it.
# Uses the globals of lb-compare.sh: work, bin, out, b1_port, b2_port, DURATION, WARMUP, THREADS,
# CONNECTIONS, HOLD_CONNS, PYTHON, ADMIN_TOKEN, PROFILE, PROFILE_SECONDS, SYSCALLS, wrk_timeout and the goals.

PATH="$PATH:/usr/sbin:/sbin"
LBC_OUT=""
LBC_BACKEND_PIDS=()
_LBC_POLICY_CREATED=0
_LBC_INSTALLED=()

_LBC_SUDO=()
[[ "$(id -u)" == 0 ]] || _LBC_SUDO=(sudo)
_lbc_sudo() { "${_LBC_SUDO[@]}" "$@"; }
_lbc_setrc() { return "$1"; }

# EXIT trap: removes a policy-rc.d this script created, then runs lib.sh's cleanup with the exit status.
lbc_cleanup() {
    local rc=$?
    if [[ "$_LBC_POLICY_CREATED" == 1 ]]; then
        _lbc_sudo rm -f /usr/sbin/policy-rc.d || true
        _LBC_POLICY_CREATED=0
    fi
    if ((rc == 0)); then bench_cleanup; else _lbc_setrc "$rc" || bench_cleanup; fi
}

# Forgets a pid we stopped ourselves, so the exit cleanup never signals a recycled pid.
lbc_untrack() {
    local pid="$1" kept=() p
    for p in "${_BENCH_PIDS[@]+"${_BENCH_PIDS[@]}"}"; do
        [[ "$p" == "$pid" ]] || kept+=("$p")
    done
    _BENCH_PIDS=("${kept[@]+"${kept[@]}"}")
}

lbc_stop() { bench_stop_pid "$1"; lbc_untrack "$1"; }

lbc_pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo "not a Debian package"; }

# apt-get install with service start-up suppressed (policy-rc.d exit 101) for the duration.
lbc_apt_install() {
    local rc=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\n# lb-compare.sh: no service start-up during its apt-get install\nexit 101\n' |
            _lbc_sudo tee /usr/sbin/policy-rc.d >/dev/null
        _lbc_sudo chmod 755 /usr/sbin/policy-rc.d
        _LBC_POLICY_CREATED=1
    fi
    bench_log "installing $* with apt-get"
    if ! timeout --kill-after=10 600 "${_LBC_SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "$@" >&2; then
        timeout --kill-after=10 300 "${_LBC_SUDO[@]}" apt-get update >&2 || rc=$?
        if ((rc == 0)); then
            timeout --kill-after=10 600 "${_LBC_SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
                apt-get install -y --no-install-recommends "$@" >&2 || rc=$?
        fi
    fi
    if [[ "$_LBC_POLICY_CREATED" == 1 ]]; then
        _lbc_sudo rm -f /usr/sbin/policy-rc.d
        _LBC_POLICY_CREATED=0
    fi
    return "$rc"
}

# Stops the system service of a package we just installed, if its maintainer scripts started it.
lbc_stop_package_services() {
    local svc pidfile
    for svc in "$@"; do
        case "$svc" in nginx | haproxy) ;; *) continue ;; esac
        if [[ -d /run/systemd/system ]] && systemctl is-active --quiet "$svc" 2>/dev/null; then
            bench_log "the $svc package started its system service; stopping it"
            timeout 60 "${_LBC_SUDO[@]}" systemctl stop "$svc" >&2 || true
        fi
        pidfile="/run/$svc.pid"
        if [[ -s "$pidfile" ]] && kill -0 "$(head -n1 "$pidfile")" 2>/dev/null; then
            bench_log "the $svc package started its system service (pid $(head -n1 "$pidfile")); stopping it"
            timeout 60 "${_LBC_SUDO[@]}" "/etc/init.d/$svc" stop >&2 || true
        fi
    done
    if ss -Htlnp 'sport = :80' 2>/dev/null | grep -Eq '"(nginx|haproxy)"'; then
        bench_die "a system nginx/haproxy still listens on port 80 after the install; stop it and rerun"
    fi
}

# Installs wrk, nginx and haproxy from the Debian archive if missing.
lbc_ensure_tools() {
    local missing=() tool
    for tool in wrk nginx haproxy; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    ((${#missing[@]} == 0)) && return 0
    lbc_apt_install "${missing[@]}" || bench_die "apt-get install ${missing[*]} failed"
    for tool in "${missing[@]}"; do
        command -v "$tool" >/dev/null 2>&1 || bench_die "$tool is still missing after apt-get install"
    done
    lbc_stop_package_services "${missing[@]}"
}

lbc_free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Prints the pids of rustc and cargo processes, and of wrk processes outside our own process group
# (someone else's benchmark); prints nothing when there are none.
lbc_other_load() {
    local p
    pgrep -x rustc 2>/dev/null || true
    pgrep -x cargo 2>/dev/null || true
    for p in $(pgrep -x wrk 2>/dev/null || true); do
        if [[ "$(ps -o pgid= -p "$p" 2>/dev/null | tr -d ' ')" != "$_LBC_PGID" ]]; then echo "wrk:$p"; fi
    done
}
_LBC_PGID="$(ps -o pgid= -p $$ | tr -d ' ')"

# Samples once a second whether rustc, cargo or another benchmark's wrk runs, into
# $LBC_OUT/compile-seen.txt.
lbc_start_compile_monitor() {
    : >"$LBC_OUT/compile-seen.txt"
    (
        parent=$$
        while kill -0 "$parent" 2>/dev/null; do
            seen="$(lbc_other_load | tr '\n' ' ')"
            if [[ -n "$seen" ]]; then echo "$(date +%s) pids $seen" >>"$LBC_OUT/compile-seen.txt"; fi
            sleep 1
        done
    ) &
    bench_track_pid "$!"
}

# Waits (polling every 2 s, up to 10 min) until no rustc, cargo or foreign wrk process runs.
lbc_wait_quiet() {
    local i
    for ((i = 0; i < 300; i++)); do
        if [[ -z "$(lbc_other_load)" ]]; then
            if ((i > 0)); then bench_log "quiet again after $((i * 2)) s of waiting"; fi
            return 0
        fi
        if ((i == 0)); then
            bench_log "rustc/cargo or another benchmark's wrk is running ($(lbc_other_load | tr '\n' ' ')); waiting up to 10 min before measuring"
        fi
        sleep 2
    done
    bench_log "warning: rustc/cargo/another wrk still running after 10 min; measuring anyway"
    echo "$(date +%s) waited 10 min, compile still running" >>"$LBC_OUT/compile-timeouts.txt"
}

# Prints how many compile samples fell into [START, END] (epoch seconds).
lbc_compile_overlap() {
    awk -v a="$1" -v b="$2" '$1 >= a && $1 <= b { n++ } END { print n + 0 }' "$LBC_OUT/compile-seen.txt"
}

# Records what else used the CPU just before a measurement (top, 1 s sample).
lbc_record_others() {
    { date -u; cat /proc/loadavg; timeout 10 top -b -n 2 -d 1 -w 200 2>/dev/null |
        awk '/^top -/ { n++ } n == 2' | sed -n '1,3p;7,14p'; } >"$1" 2>&1 || true
}

# Waits up to 15 s until URL answers anything over HTTP; dies if PID exits first.
lbc_wait_http() {
    local url="$1" pid="$2" i code
    for ((i = 0; i < 150; i++)); do
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" 2>/dev/null || true)"
        if [[ -n "$code" && "$code" != 000 ]]; then return 0; fi
        kill -0 "$pid" 2>/dev/null || bench_die "pid $pid exited before $url answered"
        sleep 0.1
    done
    bench_die "$url did not answer within 15 s"
}

lbc_nginx_user_line() { if [[ "$(id -u)" == 0 ]]; then echo "user nobody nogroup;"; fi; }

# Starts nginx in the foreground (daemon off) with DIR/nginx.conf; sets LBC_NGINX_PID.
lbc_start_nginx() {
    local dir="$1"
    timeout 30 nginx -t -q -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/config-test.txt" 2>&1 ||
        bench_die "nginx rejected $dir/nginx.conf: $(cat "$dir/config-test.txt")"
    nginx -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;' >"$dir/stdout" 2>"$dir/stderr" &
    LBC_NGINX_PID=$!
    bench_track_pid "$LBC_NGINX_PID"
}

# lbc_start_backend N PORT: one nginx worker answering every path with a 100-byte 200.
lbc_start_backend() {
    local n="$1" port="$2" dir="$work/backend$1" body
    mkdir -p "$dir"
    # "backend-N " + 89 x's = 99 bytes, + "\n" = 100 bytes.
    body="backend-$n $(printf 'x%.0s' {1..89})"
    cat >"$dir/nginx.conf" <<EOF
$(lbc_nginx_user_line)
worker_processes 1;
worker_rlimit_nofile 16384;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 10000000;
    server {
        listen 127.0.0.1:$port backlog=4096;
        default_type text/plain;
        location / { return 200 "$body\n"; }
    }
}
EOF
    lbc_start_nginx "$dir"
    LBC_BACKEND_PIDS+=("$LBC_NGINX_PID")
    lbc_wait_http "http://127.0.0.1:$port/healthz" "$LBC_NGINX_PID"
}

# lbc_start_balancer KIND RUN: sets LBC_PID, LBC_ADDR (and LBC_ADMIN for tenfold).
lbc_start_balancer() {
    local kind="$1" run="$2" dir="$work/$1-$2" port i
    mkdir -p "$dir"
    LBC_ADMIN=""
    case "$kind" in
        nginx)
            port="$(lbc_free_port)"
            cat >"$dir/nginx.conf" <<EOF
$(lbc_nginx_user_line)
worker_processes 2;
worker_rlimit_nofile 16384;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 10000000;
    upstream backends {
        server 127.0.0.1:$b1_port;
        server 127.0.0.1:$b2_port;
        keepalive 64;
        keepalive_requests 10000000;
        keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:$port backlog=4096;
        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
            lbc_start_nginx "$dir"
            LBC_PID="$LBC_NGINX_PID"
            LBC_ADDR="127.0.0.1:$port"
            lbc_wait_http "http://$LBC_ADDR/healthz" "$LBC_PID"
            ;;
        haproxy)
            port="$(lbc_free_port)"
            cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread 2
    maxconn 8192

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 60s

frontend fe
    bind 127.0.0.1:$port
    default_backend be

backend be
    balance roundrobin
    option httpchk GET /healthz
    server b1 127.0.0.1:$b1_port check inter 1s
    server b2 127.0.0.1:$b2_port check inter 1s
EOF
            timeout 30 haproxy -c -q -f "$dir/haproxy.cfg" >"$dir/config-test.txt" 2>&1 ||
                bench_die "haproxy rejected $dir/haproxy.cfg: $(cat "$dir/config-test.txt")"
            haproxy -db -f "$dir/haproxy.cfg" >"$dir/stdout" 2>"$dir/stderr" &
            LBC_PID=$!
            bench_track_pid "$LBC_PID"
            LBC_ADDR="127.0.0.1:$port"
            lbc_wait_http "http://$LBC_ADDR/healthz" "$LBC_PID"
            ;;
        tenfold)
            : >"$dir/stdout"
            (cd "$dir" && exec env TENFOLD_ADMIN_TOKEN="$ADMIN_TOKEN" "$bin" lb \
                --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --algorithm round-robin \
                --backend "127.0.0.1:$b1_port" --backend "127.0.0.1:$b2_port") \
                >"$dir/stdout" 2>"$dir/stderr" &
            LBC_PID=$!
            bench_track_pid "$LBC_PID"
            for ((i = 0; i < 300; i++)); do
                (($(wc -l <"$dir/stdout") >= 2)) && break
                kill -0 "$LBC_PID" 2>/dev/null || bench_die "tenfold lb exited: $(cat "$dir/stderr")"
                sleep 0.1
            done
            (($(wc -l <"$dir/stdout") >= 2)) || bench_die "tenfold lb printed no addresses within 30 s"
            LBC_ADDR="$(sed -n 1p "$dir/stdout" | tr -d '[:space:]')"
            LBC_ADMIN="$(sed -n 2p "$dir/stdout" | tr -d '[:space:]')"
            case "$LBC_ADDR/$LBC_ADMIN" in
                127.0.0.1:*/127.0.0.1:*) ;;
                *) bench_die "tenfold lb bound to $LBC_ADDR / $LBC_ADMIN, not loopback" ;;
            esac
            ;;
    esac
}

# Waits (up to 30 s) until the balancer answers 200 from both backends (health checks passed).
lbc_wait_both_backends() {
    local addr="$1" i j resp seen1 seen2 ok
    for ((i = 0; i < 60; i++)); do
        seen1=0 seen2=0 ok=1
        for ((j = 0; j < 6; j++)); do
            resp="$(curl -s --max-time 2 -w ' %{http_code}' "http://$addr/" 2>/dev/null || true)"
            case "$resp" in
                "backend-1 "*" 200") seen1=1 ;;
                "backend-2 "*" 200") seen2=1 ;;
                *) ok=0 ;;
            esac
        done
        if ((ok && seen1 && seen2)); then return 0; fi
        sleep 0.5
    done
    bench_die "the balancer at $addr did not answer 200 from both backends within 30 s (last: ${resp:0:80})"
}

# The balancer's processes: PID and its children (nginx workers).
lbc_pids() { echo "$1"; pgrep -P "$1" 2>/dev/null || true; }

lbc_sum_rss() {
    local p s=0 v
    for p in $(lbc_pids "$1"); do
        v="$(bench_status_kib "$p" VmRSS 2>/dev/null || echo 0)"
        s=$((s + v))
    done
    echo "$s"
}

lbc_sum_pss() {
    local p s=0 v
    for p in $(lbc_pids "$1"); do
        v="$(awk '/^Pss:/ { print $2; exit }' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)"
        s=$((s + ${v:-0}))
    done
    echo "$s"
}

lbc_sum_cpu() {
    local p
    for p in $(lbc_pids "$1"); do bench_cpu_seconds "$p" 2>/dev/null || echo 0; echo; done |
        awk 'NF { s += $1 } END { printf "%.2f\n", s }'
}

lbc_pid_list() { lbc_pids "$1" | tr '\n' ' ' | sed 's/ $//'; }

# CPU seconds of both backends (each an nginx master and its worker).
lbc_backends_cpu() {
    local p
    for p in "${LBC_BACKEND_PIDS[@]}"; do lbc_sum_cpu "$p"; done | awk '{ s += $1 } END { printf "%.2f\n", s }'
}

# CPU seconds the whole machine spent busy (user, nice, system, irq, softirq; not idle, iowait or steal).
lbc_machine_cpu() {
    awk -v t="$(getconf CLK_TCK)" '$1 == "cpu" { printf "%.2f\n", ($2 + $3 + $4 + $7 + $8) / t; exit }' /proc/stat
}

# lbc_wrk OUTFILE DURATION URL
lbc_wrk() {
    local file="$1" dur="$2" url="$3"
    timeout --foreground --kill-after=5 "$wrk_timeout" \
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"$dur" --timeout 10s --latency "$url" >"$file" 2>&1 ||
        bench_die "wrk failed: $(cat "$file")"
}

lbc_scrape() {
    curl -sS --fail --max-time 5 -H "Authorization: Bearer $ADMIN_TOKEN" "http://$LBC_ADMIN/metrics" >"$1" ||
        bench_die "GET http://$LBC_ADMIN/metrics failed"
}

# lbc_profile NAME: perf record -g on every process of the balancer during a wrk run; writes
# perf-NAME.txt (flat profile by symbol), perf-NAME-dso.txt and perf-NAME-kernel.txt (inclusive time of
# a few kernel paths: syscalls, TCP send/receive, scheduling).
lbc_profile() {
    local name="$1" wrk_pid pids
    command -v perf >/dev/null 2>&1 || { bench_log "perf not found; no profile"; return 0; }
    pids="$(lbc_pids "$LBC_PID" | paste -sd, -)"
    lbc_wait_quiet
    bench_log "profiling $name (pids $pids) for $PROFILE_SECONDS s under wrk"
    lbc_wrk "$out/$name.profiled-wrk.txt" "$((PROFILE_SECONDS + 4))s" "http://$LBC_ADDR/" &
    wrk_pid=$!
    sleep 2
    timeout --kill-after=5 "$((PROFILE_SECONDS + 30))" perf record -q -g -o "$out/perf-$name.data" \
        -p "$pids" -- sleep "$PROFILE_SECONDS" >"$out/perf-record-$name.txt" 2>&1 || true
    wait "$wrk_pid" || true
    timeout 300 perf report -i "$out/perf-$name.data" --no-children --sort symbol --stdio -g none 2>/dev/null |
        grep -v '^$' | head -n 120 >"$out/perf-$name.txt" || true
    timeout 300 perf report -i "$out/perf-$name.data" --no-children --sort dso --stdio -g none 2>/dev/null |
        grep -v '^$' | grep -v '^#' | head -n 20 >"$out/perf-$name-dso.txt" || true
    timeout 300 perf report -i "$out/perf-$name.data" --children --sort symbol --stdio -g none 2>/dev/null |
        grep -E '\] (entry_SYSCALL_64_after_hwframe|tcp_sendmsg|tcp_recvmsg|net_rx_action|sock_def_readable|__schedule|exit_to_user_mode_loop|irqentry_exit_to_user_mode|__x64_sys_[a-z_0-9]+|futex_wake|ep_poll) ' |
        sed 's/  */ /g' >"$out/perf-$name-kernel.txt" || true
    bench_log "profile: $out/perf-$name.txt"
}

# lbc_syscalls NAME: `perf stat` over every thread of the balancer during a 5 s wrk run; writes
# NAME.syscalls.txt (raw counts) and NAME.per-request.txt (CPU, context switches, syscalls per request).
LBC_SYSCALL_EVENTS="task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter"
for _e in read readv recvfrom recvmsg write writev sendto sendmsg epoll_wait epoll_pwait epoll_ctl futex accept4 sched_yield; do
    LBC_SYSCALL_EVENTS+=",syscalls:sys_enter_$_e"
done
unset _e
lbc_syscalls() {
    local name="$1" pids perf_pid
    command -v perf >/dev/null 2>&1 || { bench_log "perf not found; no syscall counts"; return 0; }
    pids="$(lbc_pids "$LBC_PID" | paste -sd, -)"
    lbc_wait_quiet
    timeout -s INT --kill-after=5 60 perf stat -x, -e "$LBC_SYSCALL_EVENTS" -p "$pids" \
        -o "$out/$name.syscalls.txt" >/dev/null 2>&1 &
    perf_pid=$!
    sleep 1
    lbc_wrk "$out/$name.syscalls-wrk.txt" 5s "http://$LBC_ADDR/"
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" 2>/dev/null || true
    awk -F, -v req="$(bench_wrk_field "$out/$name.syscalls-wrk.txt" requests)" '
        $1 ~ /^[0-9.]+$/ && req > 0 {
            ev = $3; v = $1
            if (ev == "task-clock") printf "cpu_us_per_request %.2f\n", v * 1000 / req
            else { sub(/^syscalls:sys_enter_/, "", ev); sub(/^raw_syscalls:sys_enter/, "all_syscalls", ev)
                   if (v > 0) printf "%s_per_request %.3f\n", ev, v / req }
        }' "$out/$name.syscalls.txt" >"$out/$name.per-request.txt"
    bench_log "$name per request: $(tr '\n' ' ' <"$out/$name.per-request.txt")"
}

# lbc_measure KIND RUN: one balancer, one run; appends a line to runs.tsv.
lbc_measure() {
    local kind="$1" run="$2" name="$1-$2" t0 t1 cpu0 cpu1 bcpu0 bcpu1 mcpu0 mcpu1 overlap rss_load pss_load try tries
    local t0h t1h overlap_hold hold_pid i rss_hold=0 pss_hold=0 hold_open=0 hold_failed=0 ss_count
    bench_log "=== run $run: $kind ==="
    lbc_start_balancer "$kind" "$run"
    lbc_wait_both_backends "$LBC_ADDR"
    bench_log "$kind pids $(lbc_pid_list "$LBC_PID") on $LBC_ADDR${LBC_ADMIN:+ (admin $LBC_ADMIN)}"
    lbc_pid_list "$LBC_PID" >"$out/$name.pids"
    echo "idle rss_kib=$(lbc_sum_rss "$LBC_PID") pss_kib=$(lbc_sum_pss "$LBC_PID")" >"$out/$name.idle-rss"

    # The wrk phase is repeated (up to MAX_TRIES) when a compile overlapped it; every try is kept.
    for ((try = 1; try <= MAX_TRIES; try++)); do
        lbc_wait_quiet
        lbc_record_others "$out/$name.others.txt"
        bench_log "warm-up wrk $WARMUP"
        t0="$(date +%s)"
        lbc_wrk "$out/$name.warmup.txt" "$WARMUP" "http://$LBC_ADDR/"
        if [[ "$kind" == tenfold ]]; then lbc_scrape "$out/$name.metrics-before.txt"; fi
        cpu0="$(lbc_sum_cpu "$LBC_PID")"
        bcpu0="$(lbc_backends_cpu)"
        mcpu0="$(lbc_machine_cpu)"
        bench_log "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency http://$LBC_ADDR/ (try $try)"
        lbc_wrk "$out/$name.wrk.txt" "$DURATION" "http://$LBC_ADDR/"
        cpu1="$(lbc_sum_cpu "$LBC_PID")"
        bcpu1="$(lbc_backends_cpu)"
        mcpu1="$(lbc_machine_cpu)"
        t1="$(date +%s)"
        cp "$out/$name.wrk.txt" "$out/$name.wrk-try$try.txt"
        overlap="$(lbc_compile_overlap "$t0" "$t1")"
        if ((overlap == 0)); then break; fi
        if ((try < MAX_TRIES)); then
            bench_log "rustc/cargo or a foreign wrk ran during $overlap s of this wrk phase ($(bench_wrk_field "$out/$name.wrk.txt" rps) req/s); repeating it"
        fi
    done
    tries="$try"
    ((tries <= MAX_TRIES)) || tries="$MAX_TRIES"
    if [[ "$kind" == tenfold ]]; then
        lbc_scrape "$out/$name.metrics-after.txt"
        "$PYTHON" "$BENCH_DIR/lb-compare-helper.py" hist "$out/$name.metrics-before.txt" \
            "$out/$name.metrics-after.txt" lb_added_latency_seconds >"$out/$name.added-latency.txt"
        "$PYTHON" "$BENCH_DIR/lb-compare-helper.py" hist "$out/$name.metrics-before.txt" \
            "$out/$name.metrics-after.txt" lb_backend_latency_seconds >"$out/$name.backend-latency.txt"
        cat "$out/$name.added-latency.txt" >&2
    fi
    rss_load="$(lbc_sum_rss "$LBC_PID")"
    pss_load="$(lbc_sum_pss "$LBC_PID")"
    grep -E 'Requests/sec|Latency|50%|99%|requests in|Non-2xx|Socket errors' "$out/$name.wrk.txt" >&2 || true
    bench_log "$kind RSS after load: $(bench_mib "$rss_load") MiB (PSS $(bench_mib "$pss_load") MiB)"

    if [[ "$SYSCALLS" == 1 ]]; then lbc_syscalls "$name"; fi
    # PROFILE=1: the first run of each balancer; PROFILE="tenfold" (a list of kinds): those only.
    if [[ ("$PROFILE" == 1 || " $PROFILE " == *" $kind "*) && ! -e "$out/profiled-$kind" ]]; then
        lbc_profile "$name"
        touch "$out/profiled-$kind"
    fi

    lbc_wait_quiet
    bench_log "opening $HOLD_CONNS idle keep-alive connections"
    t0h="$(date +%s)"
    "$PYTHON" "$BENCH_DIR/lb-compare-helper.py" hold 127.0.0.1 "${LBC_ADDR##*:}" "$HOLD_CONNS" 300 \
        >"$out/$name.hold.txt" 2>"$out/$name.hold.stderr" &
    hold_pid=$!
    bench_track_pid "$hold_pid"
    for ((i = 0; i < 900; i++)); do
        grep -q '^open=' "$out/$name.hold.txt" && break
        kill -0 "$hold_pid" 2>/dev/null || break
        sleep 0.1
    done
    if grep -q '^open=' "$out/$name.hold.txt"; then
        rss_hold="$(lbc_sum_rss "$LBC_PID")"
        pss_hold="$(lbc_sum_pss "$LBC_PID")"
        ss_count="$(ss -Htn state established "( dport = :${LBC_ADDR##*:} )" 2>/dev/null | wc -l || echo '?')"
        hold_open="$(sed -n 's/^open=//p' "$out/$name.hold.txt")"
        hold_failed="$(sed -n 's/.*failed=\([0-9]*\).*/\1/p' "$out/$name.hold.txt")"
        echo "rss_kib=$rss_hold pss_kib=$pss_hold open=$hold_open ss_established=$ss_count $(head -n1 "$out/$name.hold.txt")" \
            >"$out/$name.hold-rss"
        bench_log "$kind RSS with $hold_open open connections (ss: $ss_count): $(bench_mib "$rss_hold") MiB (PSS $(bench_mib "$pss_hold") MiB)"
    else
        bench_log "warning: the connection holder did not finish within 90 s: $(cat "$out/$name.hold.txt" "$out/$name.hold.stderr")"
    fi
    lbc_stop "$hold_pid"
    t1h="$(date +%s)"
    overlap_hold="$(lbc_compile_overlap "$t0h" "$t1h")"
    if ((overlap + overlap_hold > 0)); then
        bench_log "warning: rustc/cargo or a foreign wrk ran during the measurements: wrk phase $overlap s (try $tries), connection hold $overlap_hold s"
    fi

    lbc_stop "$LBC_PID"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$run" \
        "$(bench_wrk_field "$out/$name.wrk.txt" rps)" "$(bench_wrk_field "$out/$name.wrk.txt" p50)" \
        "$(bench_wrk_field "$out/$name.wrk.txt" p99)" "$(bench_wrk_field "$out/$name.wrk.txt" errors)" \
        "$(bench_wrk_field "$out/$name.wrk.txt" non2xx)" "$(bench_wrk_field "$out/$name.wrk.txt" requests)" \
        "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { printf "%.2f", b - a }')" \
        "$rss_load" "$pss_load" "$rss_hold" "$pss_hold" "${hold_open:-0}" "${hold_failed:-0}" "$overlap/$overlap_hold" "$tries" \
        "$(awk -v a="$bcpu0" -v b="$bcpu1" 'BEGIN { printf "%.2f", b - a }')" \
        "$(awk -v a="$mcpu0" -v b="$mcpu1" 'BEGIN { printf "%.2f", b - a }')" \
        >>"$out/runs.tsv"
}

# Prints the Markdown summary (per run, per balancer, ratios, goals); writes $out/goals-missed.
lbc_summary() {
    echo "### Per run"
    echo
    echo "| Run | Balancer | Requests/s | p50 | p99 | Errors / non-2xx | Balancer CPU per request | RSS after load | RSS with $HOLD_CONNS conns (PSS) | Open conns | Other load (rustc/cargo/foreign wrk) during wrk/hold (wrk try) |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk -F'\t' 'NR > 1 {
        printf "| %s | %s | %d | %.2f ms | %.2f ms | %d / %d | %.1f µs | %.1f MiB | %.1f MiB (%.1f) | %d | %s (%s) |\n",
            $2, $1, $3, $4, $5, $6, $7, ($8 > 0 ? $9 / $8 * 1e6 : 0), $10 / 1024, $12 / 1024, $13 / 1024, $14,
            ($16 == "0/0" ? "none" : $16 " s"), $17
    }' "$out/runs.tsv"
    echo
    echo "### Per balancer (mean over its runs; RSS: the highest)"
    echo
    echo "| Balancer | Runs | Requests/s | p50 | p99 | Balancer CPU per request | RSS after load | RSS with $HOLD_CONNS conns | PSS with $HOLD_CONNS conns |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk -F'\t' 'NR > 1 {
        k = $1; n[k]++; rps[k] += $3; p50[k] += $4; p99[k] += $5; cpu[k] += ($8 > 0 ? $9 / $8 * 1e6 : 0)
        if ($10 > rl[k]) rl[k] = $10; if ($12 > rh[k]) rh[k] = $12; if ($13 > ph[k]) ph[k] = $13
        if (!(k in seen)) { seen[k] = 1; order[++m] = k }
    } END {
        for (i = 1; i <= m; i++) { k = order[i]
            printf "| %s | %d | %d | %.2f ms | %.2f ms | %.1f µs | %.1f MiB | %.1f MiB | %.1f MiB |\n",
                k, n[k], rps[k] / n[k], p50[k] / n[k], p99[k] / n[k], cpu[k] / n[k], rl[k] / 1024, rh[k] / 1024, ph[k] / 1024 }
    }' "$out/runs.tsv"
    echo
    echo "### Where each request's CPU went (measured wrk phase; mean over each balancer's runs)"
    echo
    echo "Machine: busy CPU of both cores (/proc/stat: user, nice, system, irq, softirq). wrk and the rest: the"
    echo "machine's figure minus the balancer's and the backends'."
    echo
    echo "| Balancer | Balancer | Backends | wrk and the rest | Machine | Machine CPU vs nginx |"
    echo "|---|---:|---:|---:|---:|---:|"
    awk -F'\t' 'NR > 1 && $8 > 0 {
        k = $1; n[k]++; lb[k] += $9 / $8 * 1e6; be[k] += $18 / $8 * 1e6; m[k] += $19 / $8 * 1e6
        if (!(k in seen)) { seen[k] = 1; order[++c] = k }
    } END {
        for (i = 1; i <= c; i++) { k = order[i]
            ratio = ("nginx" in n) ? sprintf("%.3f×", (m[k] / n[k]) / (m["nginx"] / n["nginx"])) : ""
            printf "| %s | %.1f µs | %.1f µs | %.1f µs | %.1f µs | %s |\n", k, lb[k] / n[k], be[k] / n[k],
                (m[k] - lb[k] - be[k]) / n[k], m[k] / n[k], ratio }
    }' "$out/runs.tsv"
    echo
    echo "### Goals"
    echo
    awk -F'\t' -v vn="$MIN_VS_NGINX" -v vh="$MIN_VS_HAPROXY" -v maxmib="$MAX_RSS_MIB" -v hold="$HOLD_CONNS" \
        -v missedfile="$out/goals-missed" 'NR > 1 {
        k = $1; n[k]++; rps[k] += $3; p99[k] += $5; cpu[k] += ($8 > 0 ? $9 / $8 * 1e6 : 0)
        if ($12 > rh[k]) rh[k] = $12
        if (!(k in minopen) || $14 < minopen[k]) minopen[k] = $14
    } END {
        missed = 0
        print "| Goal | Measured | Met? |"
        print "|---|---:|---|"
        if (n["tenfold"] && n["nginx"]) {
            r = (rps["tenfold"] / n["tenfold"]) / (rps["nginx"] / n["nginx"])
            ok = r >= vn; missed += !ok
            printf "| Throughput ≥ %.2f× nginx | %.3f× | %s |\n", vn, r, ok ? "Yes" : "**No**"
        }
        if (n["tenfold"] && n["haproxy"]) {
            r = (rps["tenfold"] / n["tenfold"]) / (rps["haproxy"] / n["haproxy"])
            ok = r >= vh; missed += !ok
            printf "| Throughput ≥ %.2f× HAProxy | %.3f× | %s |\n", vh, r, ok ? "Yes" : "**No**"
        }
        if (n["tenfold"] && n["nginx"]) {
            a = p99["tenfold"] / n["tenfold"]; b = p99["nginx"] / n["nginx"]
            ok = a <= b; missed += !ok
            printf "| p99 ≤ nginx p99 | %.2f ms vs %.2f ms (%.2f×) | %s |\n", a, b, a / b, ok ? "Yes" : "**No**"
        }
        if (n["tenfold"]) {
            ok = rh["tenfold"] / 1024 <= maxmib && minopen["tenfold"] >= hold; missed += !ok
            printf "| RSS ≤ %d MiB with %d open client connections | %.1f MiB (highest; %d of %d open) | %s |\n",
                maxmib, hold, rh["tenfold"] / 1024, minopen["tenfold"], hold, ok ? "Yes" : "**No**"
        }
        # Not a goal of the issue, but steadier than throughput on a shared host: the CPU of the balancer itself.
        for (j = 1; j <= 2; j++) { peer = (j == 1 ? "nginx" : "haproxy")
            if (n["tenfold"] && n[peer] && cpu[peer] > 0)
                printf "| (for information) balancer CPU per request vs %s | %.2f× | |\n", peer,
                    (cpu["tenfold"] / n["tenfold"]) / (cpu[peer] / n[peer])
        }
        print missed > missedfile
    }' "$out/runs.tsv"
    local f
    if compgen -G "$out/*.per-request.txt" >/dev/null; then
        echo
        echo "### Per request, from \`perf stat\` on the balancer's threads during a 5 s wrk run (SYSCALLS=1)"
        echo
        echo "| Run | CPU | Context switches | Syscalls | reads | writes | epoll_wait | futex |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|"
        for f in "$out"/*.per-request.txt; do
            awk -v n="$(basename "$f" .per-request.txt)" '
                { v[$1] = $2 }
                END { printf "| %s | %.1f µs | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n", n,
                        v["cpu_us_per_request"], v["context-switches_per_request"], v["all_syscalls_per_request"],
                        v["read_per_request"] + v["readv_per_request"] + v["recvfrom_per_request"] + v["recvmsg_per_request"],
                        v["write_per_request"] + v["writev_per_request"] + v["sendto_per_request"] + v["sendmsg_per_request"],
                        v["epoll_wait_per_request"] + v["epoll_pwait_per_request"], v["futex_per_request"] }' "$f"
        done
    fi
    for f in "$out"/tenfold-*.added-latency.txt; do
        [[ -e "$f" ]] || continue
        echo
        echo "### Balancer-added latency, $(basename "$f" .added-latency.txt) (lb_added_latency_seconds, measured wrk phase)"
        echo
        echo '```'
        cat "$f"
        echo '```'
    done
    if [[ -s "$out/compile-seen.txt" ]]; then
        echo
        echo "rustc/cargo or a foreign wrk was running in $(wc -l <"$out/compile-seen.txt") one-second samples of the whole run (between phases too; see compile-seen.txt)."
    fi
}
