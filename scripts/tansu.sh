#!/usr/bin/env bash
# Manages a Tansu broker (a Kafka-API broker, crates.io `tansu`) for
# ticklake's integration tests.
#
#   tansu.sh install
#       cargo-install Tansu if the `tansu` binary is missing.
#   tansu.sh start <workdir>
#       start a broker on 127.0.0.1 with SQLite storage in <workdir>, wait
#       until Kafka clients can fetch metadata, print the bootstrap address.
#       Files in <workdir>: tansu.db (storage), tansu.pid, bootstrap, tansu.log.
#       If <workdir>/bootstrap exists from an earlier start, the same port is
#       reused, so "stop, wait, start" simulates a broker outage and clients
#       reconnect to the address they already have.
#   tansu.sh stop <workdir>
#       SIGKILL by default, i.e. a crash (see below). With
#       TANSU_STOP_MODE=graceful: SIGTERM, then SIGKILL after
#       TANSU_STOP_TIMEOUT seconds (default 10).
#   tansu.sh restart <workdir>
#       stop, then start on the same port with the same storage.
#   tansu.sh create-topic <workdir> <topic> <partitions>
#       create a topic (idempotent) and wait until metadata shows it.
#
# Why stop kills by default: Tansu 0.6.0's graceful shutdown (SIGTERM) shuts
# its storage task down before the connections, so produce requests still in
# flight fail with UNKNOWN_SERVER_ERROR, which librdkafka does not retry; and
# with an idempotent producer in flight, the restarted broker panics on that
# producer's next batch ("more or less than one row" in tansu-storage lite.rs)
# and answers every later request with an error. SIGKILL looks like a crash
# or a network outage to clients: they reconnect and retry, and the SQLite
# storage is crash-safe, so nothing acknowledged is lost.
#
# Tansu's memory:// engine reports wrong high watermarks (0.6.0), so only its
# SQLite engine is used. Kafka-protocol checks go through
# scripts/kafka_check.py (confluent-kafka) because Debian's kcat is too old to
# complete the ApiVersions handshake with Tansu.
set -euo pipefail

TANSU_VERSION="0.6.0"
# Without a storage feature the broker refuses to start; libsql provides the
# sqlite:// engine, dynostore the memory:// and s3:// ones.
TANSU_FEATURES="dynostore,libsql"
START_TIMEOUT="${TANSU_START_TIMEOUT:-60}"
STOP_TIMEOUT="${TANSU_STOP_TIMEOUT:-10}"
STOP_MODE="${TANSU_STOP_MODE:-kill}"

scripts_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# cargo install puts binaries here; CI shells do not always have it on PATH.
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"

log() { echo "tansu.sh: $*" >&2; }
die() {
    log "$*"
    exit 1
}

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# Python with confluent-kafka: the one the tests use, or the project venv.
kafka_python() {
    if [[ -n "${TICKLAKE_TEST_PYTHON:-}" ]]; then
        echo "$TICKLAKE_TEST_PYTHON"
    else
        "$scripts_dir/setup-python.sh"
    fi
}

cmd_install() {
    local force=()
    if command -v tansu >/dev/null; then
        local have
        have="$(tansu --version 2>/dev/null || true)"
        if tansu --help 2>/dev/null | grep -q '^Storage engines:.*libsql'; then
            if [[ "$have" != *"$TANSU_VERSION"* ]]; then
                log "warning: found ${have:-unknown tansu version}, tests expect $TANSU_VERSION"
            fi
            log "$(command -v tansu): ${have:-installed}"
            return 0
        fi
        log "$(command -v tansu) lacks the libsql (sqlite://) storage engine; reinstalling"
        force=(--force)
    fi
    log "installing tansu $TANSU_VERSION (features $TANSU_FEATURES); this takes 20-35 min on 2 cores"
    local start=$SECONDS
    # --locked: use Tansu's own Cargo.lock so a new upstream release of a
    # dependency cannot break the build.
    # opt-level 1: a test broker does not need full optimisation, and it cut
    # the build from about 36 to 20 minutes on a 2-core machine.
    CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
        cargo install tansu --version "=$TANSU_VERSION" --locked \
        --features "$TANSU_FEATURES" "${force[@]}"
    log "installed tansu in $((SECONDS - start)) s"
}

# Absolute path of <workdir>, created if needed.
workdir_arg() {
    [[ -n "${1:-}" ]] || usage
    mkdir -p "$1"
    (cd "$1" && pwd)
}

free_port() {
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# True while <pid> is a live process (not a zombie: an orphaned broker stays
# visible to kill -0 until someone reaps it).
proc_alive() {
    local state
    state="$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
    [[ -n "$state" && "$state" != "Z" ]]
}

# proc_alive, and its command line names tansu: a pid file may outlive its
# process, and the pid may since have been reused. Only for pids from a pid
# file: right after fork, the command line is briefly unreadable while exec
# replaces the subshell.
tansu_alive() {
    proc_alive "$1" && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q tansu
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

fail_start() {
    local dir=$1 pid=$2
    shift 2
    log "$*"
    if [[ -f "$dir/tansu.log" ]]; then
        log "last lines of $dir/tansu.log:"
        tail -n 40 "$dir/tansu.log" >&2
    fi
    if proc_alive "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/tansu.pid"
    exit 1
}

cmd_start() {
    local dir port pid bootstrap python
    dir="$(workdir_arg "${1:-}")"
    command -v tansu >/dev/null || die "tansu is not installed (run: $0 install)"

    if [[ -f "$dir/tansu.pid" ]] && tansu_alive "$(cat "$dir/tansu.pid")"; then
        die "tansu already running in $dir (pid $(cat "$dir/tansu.pid"))"
    fi
    if [[ -s "$dir/bootstrap" ]]; then
        bootstrap="$(cat "$dir/bootstrap")"
        port="${bootstrap##*:}"
        local i
        for ((i = 0; i < 50; i++)); do
            port_open "$port" || break
            sleep 0.1
        done
        if port_open "$port"; then
            die "port $port (from $dir/bootstrap) is in use by another process"
        fi
    else
        port="$(free_port)"
        bootstrap="127.0.0.1:$port"
    fi
    python="$(kafka_python)"

    # Tansu resolves sqlite://<name> against its working directory, so run
    # it from <workdir>. The advertised listener must be the address clients
    # dial: its default, localhost:9092, would send them elsewhere after the
    # first metadata response. stdin/stdout/stderr are detached from the
    # caller so a test harness capturing this script's output does not wait
    # for the broker to exit.
    echo "=== tansu start $(date -u +%FT%TZ) on $bootstrap" >>"$dir/tansu.log"
    (
        cd "$dir"
        # NO_COLOR: plain text in tansu.log instead of ANSI escapes.
        NO_COLOR=1 exec tansu broker \
            --listener-url "tcp://$bootstrap" \
            --advertised-listener-url "tcp://$bootstrap" \
            --storage-engine "sqlite://tansu.db" \
            </dev/null >>"$dir/tansu.log" 2>&1
    ) &
    pid=$!
    echo "$pid" >"$dir/tansu.pid"
    echo "$bootstrap" >"$dir/bootstrap"

    local deadline=$((SECONDS + START_TIMEOUT))
    until port_open "$port"; do
        proc_alive "$pid" || fail_start "$dir" "$pid" "tansu exited during startup"
        ((SECONDS < deadline)) || fail_start "$dir" "$pid" "port $port not open after ${START_TIMEOUT} s"
        sleep 0.2
    done
    until "$python" "$scripts_dir/kafka_check.py" metadata "$bootstrap" >/dev/null 2>&1; do
        proc_alive "$pid" || fail_start "$dir" "$pid" "tansu exited during startup"
        ((SECONDS < deadline)) || fail_start "$dir" "$pid" "no Kafka metadata from $bootstrap after ${START_TIMEOUT} s"
        sleep 0.5
    done
    log "tansu pid $pid serving $bootstrap (storage $dir/tansu.db)"
    echo "$bootstrap"
}

cmd_stop() {
    local dir pid
    dir="$(workdir_arg "${1:-}")"
    if [[ ! -f "$dir/tansu.pid" ]]; then
        log "no tansu.pid in $dir; nothing to stop"
        return 0
    fi
    pid="$(cat "$dir/tansu.pid")"
    if tansu_alive "$pid"; then
        case "$STOP_MODE" in
            kill) ;;
            graceful)
                kill -TERM "$pid" 2>/dev/null || true
                local deadline=$((SECONDS + STOP_TIMEOUT))
                while proc_alive "$pid" && ((SECONDS < deadline)); do
                    sleep 0.2
                done
                if proc_alive "$pid"; then
                    log "tansu pid $pid still running ${STOP_TIMEOUT} s after SIGTERM; sending SIGKILL"
                fi
                ;;
            *) die "TANSU_STOP_MODE must be kill or graceful, not $STOP_MODE" ;;
        esac
        if proc_alive "$pid"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
        # Wait until it is gone, so a start right after this can bind the port.
        while proc_alive "$pid"; do
            sleep 0.1
        done
        # The pid can look dead (zombie leader) while other threads still
        # hold the listening socket for a moment.
        if [[ -s "$dir/bootstrap" ]]; then
            local port i
            port="$(cut -d: -f2 "$dir/bootstrap")"
            for ((i = 0; i < 100; i++)); do
                port_open "$port" || break
                sleep 0.1
            done
        fi
        log "stopped tansu pid $pid ($STOP_MODE)"
    fi
    rm -f "$dir/tansu.pid"
    echo "=== tansu stopped $(date -u +%FT%TZ)" >>"$dir/tansu.log"
}

cmd_create_topic() {
    [[ $# -eq 3 ]] || usage
    local dir python
    dir="$(workdir_arg "$1")"
    [[ -s "$dir/bootstrap" ]] || die "no bootstrap file in $dir; start tansu first"
    python="$(kafka_python)"
    "$python" "$scripts_dir/kafka_check.py" create-topic "$(cat "$dir/bootstrap")" "$2" "$3"
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start "${2:-}" ;;
    stop) cmd_stop "${2:-}" ;;
    restart)
        cmd_stop "${2:-}"
        cmd_start "${2:-}"
        ;;
    create-topic)
        shift
        cmd_create_topic "$@"
        ;;
    *) usage ;;
esac
