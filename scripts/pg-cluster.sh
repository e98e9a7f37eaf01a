#!/usr/bin/env bash
# A local PostgreSQL cluster on loopback ports, from the Debian binaries: a primary, streaming replicas
# (pg_basebackup -R) and separate servers for shards. For tests, CI and trying tenfold's database scaling
# on one machine. Test settings (fsync off): never for data you want to keep.
#
#   bash scripts/pg-cluster.sh start [--dir DIR] [--port P|auto] [--replicas N] [--shards N] [--delay-ms MS]
#   bash scripts/pg-cluster.sh status [--dir DIR]
#   bash scripts/pg-cluster.sh env [--dir DIR]          # the URLs, as shell assignments
#   bash scripts/pg-cluster.sh stop [--dir DIR]         # stops every server of this cluster (data kept)
#   bash scripts/pg-cluster.sh kill NAME [--dir DIR]    # stops one server at once (pg_ctl -m immediate),
#                                                      # e.g. replica2; `start` starts it again
#   bash scripts/pg-cluster.sh destroy [--dir DIR]      # stops and deletes the cluster
#
# Defaults: --dir ${TMPDIR:-/tmp}/tenfold-pg-cluster, --port 55432 (primary; replicas on the next ports,
# shards from port + 10), --replicas 2, --shards 2, --delay-ms 0 (recovery_min_apply_delay of replica 1,
# to make a lagging replica on purpose). Every server listens on 127.0.0.1 only, trusts local
# connections, and has a database `tenfold`. Run as root, the servers run as the `postgres` user.
# `start` is idempotent: servers already running are left alone. DIR/cluster.env holds the URLs.
set -euo pipefail

cmd="${1:-}"
shift || true
target=""
if [[ "$cmd" == kill ]]; then
    target="${1:-}"
    shift || true
fi
DIR="${TMPDIR:-/tmp}/tenfold-pg-cluster"
PORT=55432
REPLICAS=2
SHARDS=2
DELAY_MS=0
while (($#)); do
    case "$1" in
        --dir) DIR="$2"; shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        --replicas) REPLICAS="$2"; shift 2 ;;
        --shards) SHARDS="$2"; shift 2 ;;
        --delay-ms) DELAY_MS="$2"; shift 2 ;;
        *) echo "pg-cluster: unknown option $1" >&2; exit 64 ;;
    esac
done

die() { echo "pg-cluster: $*" >&2; exit 1; }

BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)"
[[ -x "$BIN/initdb" ]] || die "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)"

# PostgreSQL refuses to run as root: as root, run its programs as the postgres user.
as_pg() {
    if ((EUID == 0)); then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port_block() { # a base port with 10 + SHARDS free ports above it
    python3 - "$SHARDS" <<'EOF'
import socket, sys, random
need = 10 + int(sys.argv[1])
for _ in range(200):
    base = random.randint(20000, 60000 - need)
    ok = True
    for p in range(base, base + need):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            ok = False
        finally:
            s.close()
        if not ok:
            break
    if ok:
        print(base)
        sys.exit(0)
sys.exit("no free block of ports")
EOF
}

server_dirs() { # every server directory of the cluster, primary first
    [[ -d "$DIR" ]] || return 0
    for d in "$DIR"/primary "$DIR"/replica* "$DIR"/shard*; do
        [[ -f "$d/PG_VERSION" ]] && echo "$d"
    done
    return 0
}

# The effective port: postgresql.auto.conf overrides postgresql.conf, so it is read last.
port_of() { awk -F"[ =']+" '$1 == "port" { p = $2 } END { print p }' "$1/postgresql.conf" "$1/postgresql.auto.conf" 2>/dev/null; }

running() { as_pg "$BIN/pg_ctl" -D "$1" status >/dev/null 2>&1; }

start_server() {
    local d="$1"
    running "$d" && return 0
    as_pg "$BIN/pg_ctl" -D "$d" -l "$d/server.log" -w -t 60 start >/dev/null ||
        { tail -n 20 "$d/server.log" >&2; die "could not start $(basename "$d")"; }
}

configure() { # configure DIR PORT
    local d="$1" port="$2"
    cat >>"$d/postgresql.conf" <<EOF
# tenfold pg-cluster
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = ''
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
hot_standby_feedback = on
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 32MB
max_connections = 200
log_min_messages = warning
EOF
    cat >"$d/pg_hba.conf" <<EOF
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
EOF
}

new_server() { # new_server NAME PORT
    local d="$DIR/$1"
    as_pg "$BIN/initdb" -D "$d" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null ||
        die "initdb $1 failed"
    configure "$d" "$2"
    start_server "$d"
    as_pg "$BIN/psql" -h 127.0.0.1 -p "$2" -U postgres -qc "CREATE DATABASE tenfold" postgres >/dev/null
}

write_env() {
    local p r s
    p="$(port_of "$DIR/primary")"
    {
        echo "TENFOLD_DATABASE_URL=postgres://postgres@127.0.0.1:$p/tenfold"
        local reps=() shards=()
        for r in "$DIR"/replica*; do [[ -f "$r/PG_VERSION" ]] && reps+=("postgres://postgres@127.0.0.1:$(port_of "$r")/tenfold"); done
        for s in "$DIR"/shard*; do [[ -f "$s/PG_VERSION" ]] && shards+=("postgres://postgres@127.0.0.1:$(port_of "$s")/tenfold"); done
        echo "TENFOLD_REPLICA_URLS=$(IFS=,; echo "${reps[*]-}")"
        echo "TENFOLD_SHARD_URLS=$(IFS=,; echo "${shards[*]-}")"
    } >"$DIR/cluster.env"
}

case "$cmd" in
    start)
        [[ "$PORT" == auto ]] && PORT="$(free_port_block)"
        mkdir -p "$DIR"
        ((EUID == 0)) && chown postgres: "$DIR"
        chmod 700 "$DIR"
        if [[ -f "$DIR/primary/PG_VERSION" ]]; then
            start_server "$DIR/primary"
        else
            new_server primary "$PORT"
        fi
        primary_port="$(port_of "$DIR/primary")"
        for ((i = 1; i <= REPLICAS; i++)); do
            d="$DIR/replica$i"
            if [[ ! -f "$d/PG_VERSION" ]]; then
                as_pg "$BIN/pg_basebackup" -h 127.0.0.1 -p "$primary_port" -U postgres -D "$d" -R -X stream \
                    --no-sync -c fast >/dev/null || die "pg_basebackup for replica $i failed"
                {
                    echo "port = $((primary_port + i))"
                    if ((i == 1 && DELAY_MS > 0)); then echo "recovery_min_apply_delay = '${DELAY_MS}ms'"; fi
                } | as_pg tee -a "$d/postgresql.auto.conf" >/dev/null
            fi
            start_server "$d"
        done
        for ((i = 1; i <= SHARDS; i++)); do
            if [[ -f "$DIR/shard$i/PG_VERSION" ]]; then
                start_server "$DIR/shard$i"
            else
                new_server "shard$i" "$((primary_port + 9 + i))"
            fi
        done
        write_env
        cat "$DIR/cluster.env"
        ;;
    status)
        while read -r d; do
            [[ -n "$d" ]] || continue
            state=stopped
            running "$d" && state=running
            echo "$(basename "$d") port $(port_of "$d") $state"
        done < <(server_dirs)
        ;;
    env)
        [[ -f "$DIR/cluster.env" ]] || die "no cluster in $DIR (run start first)"
        cat "$DIR/cluster.env"
        ;;
    kill)
        [[ -f "$DIR/$target/PG_VERSION" ]] || die "no server \"$target\" in $DIR"
        as_pg "$BIN/pg_ctl" -D "$DIR/$target" -m immediate -w -t 60 stop >/dev/null
        ;;
    stop | destroy)
        # Replicas first, so the primary does not wait on their connections.
        while read -r d; do
            [[ -n "$d" ]] || continue
            running "$d" && as_pg "$BIN/pg_ctl" -D "$d" -m fast -w -t 60 stop >/dev/null || true
        done < <(server_dirs | sort -r)
        [[ "$cmd" == destroy ]] && rm -rf "$DIR"
        ;;
    *)
        sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
        exit 64
        ;;
esac
