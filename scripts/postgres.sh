#!/usr/bin/env bash
# Manages a throwaway PostgreSQL server for ticklake's tests of the SQL
# catalog on PostgreSQL (lake.catalog_uri = "postgres://…").
#
#   postgres.sh start <workdir>
#       initdb into <workdir>/data (first start only), start the server on
#       127.0.0.1 on a free port with its unix socket in <workdir>, create
#       the database `ticklake`, print its URI:
#       postgres://USER@127.0.0.1:PORT/ticklake
#       Files in <workdir>: data/ (the cluster), port, postgres.log.
#   postgres.sh stop <workdir>
#       stop the server (fast shutdown: open sessions are ended).
#
# The server binaries come from Debian's postgresql package
# (scripts/system-packages.sh); PG_BIN overrides their directory.
# PostgreSQL refuses to run as root, so as root the cluster belongs to the
# `postgres` user the package creates, and the server runs as it.
# Authentication is `trust` on 127.0.0.1 and the socket: a test server.
# fsync is off: a crash of the test machine loses a test run anyway, and
# every catalog commit would otherwise wait on the disk.
set -euo pipefail

DB_NAME="ticklake"
START_TIMEOUT="${POSTGRES_START_TIMEOUT:-60}"

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The newest installed server's binaries.
pg_bin() {
    if [[ -n "${PG_BIN:-}" ]]; then
        echo "$PG_BIN"
        return
    fi
    local d
    d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    [[ -n "$d" && -x "$d/initdb" ]] ||
        die "no PostgreSQL server binaries under /usr/lib/postgresql (Debian: apt-get install postgresql; or set PG_BIN)"
    echo "$d"
}

# Runs a command as the cluster's owner: `postgres` when we are root.
as_owner() {
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

owner_name() {
    if [[ "$(id -u)" == 0 ]]; then
        echo postgres
    else
        id -un
    fi
}

cmd_start() {
    local dir bin user port
    dir="$(workdir_arg "${1:-}")"
    bin="$(pg_bin)"
    user="$(owner_name)"
    if [[ "$(id -u)" == 0 ]]; then
        getent passwd postgres >/dev/null ||
            die "running as root needs the postgres user (created by Debian's postgresql package)"
        touch "$dir/postgres.log"
        # The server appends to its log as postgres (pg_ctl -l).
        chown postgres: "$dir" "$dir/postgres.log"
    fi
    # The server's cwd must be readable by its user, whatever ours is.
    cd "$dir"
    if [[ ! -f "$dir/data/PG_VERSION" ]]; then
        as_owner "$bin/initdb" -D "$dir/data" -U "$user" --auth=trust \
            --encoding=UTF8 --no-locale >>"$dir/postgres.log" 2>&1 ||
            die_with_log "$dir/postgres.log" "initdb failed"
    fi
    if as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        die "postgres already running in $dir"
    fi
    if [[ -s "$dir/port" ]]; then
        port="$(cat "$dir/port")"
    else
        port="$(free_port)"
        echo "$port" >"$dir/port"
    fi
    # max_connections: every daemon holds a catalog pool (10 by default)
    # and the pointer swap's (2); a test runs several daemons.
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t "$START_TIMEOUT" \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=300" \
        start >/dev/null ||
        die_with_log "$dir/postgres.log" "the server did not start"
    if [[ "$(as_owner "$bin/psql" -h "$dir" -p "$port" -U "$user" -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != 1 ]]; then
        as_owner "$bin/createdb" -h "$dir" -p "$port" -U "$user" "$DB_NAME"
    fi
    log "postgres serving 127.0.0.1:$port (cluster $dir/data, log $dir/postgres.log)"
    echo "postgres://$user@127.0.0.1:$port/$DB_NAME"
}

cmd_stop() {
    local dir bin
    dir="$(workdir_arg "${1:-}")"
    bin="$(pg_bin)"
    if [[ ! -f "$dir/data/PG_VERSION" ]]; then
        log "no cluster in $dir; nothing to stop"
        return 0
    fi
    cd "$dir"
    if as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
        log "stopped postgres in $dir"
    fi
}

case "${1:-}" in
    start) cmd_start "${2:-}" ;;
    stop) cmd_stop "${2:-}" ;;
    *) usage ;;
esac
