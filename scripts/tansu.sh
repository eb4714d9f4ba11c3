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
#       The readiness check is a Kafka client in Python: it uses
#       TICKLAKE_TEST_PYTHON, or else creates the test venv with
#       scripts/setup-python.sh (about a minute the first time).
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

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# cargo install puts binaries here; CI shells do not always have it on PATH.
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"

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

cmd_start() {
    local dir port pid bootstrap python
    dir="$(workdir_arg "${1:-}")"
    command -v tansu >/dev/null || die "tansu is not installed (run: $0 install)"

    if [[ -f "$dir/tansu.pid" ]] && pid_runs "$(cat "$dir/tansu.pid")" tansu; then
        die "tansu already running in $dir (pid $(cat "$dir/tansu.pid"))"
    fi
    if [[ -s "$dir/bootstrap" ]]; then
        bootstrap="$(cat "$dir/bootstrap")"
        port="${bootstrap##*:}"
        port_free_within "$port" 50 ||
            die "port $port (from $dir/bootstrap) is in use by another process"
    else
        port="$(free_port)"
        bootstrap="127.0.0.1:$port"
    fi
    python="$(test_python)"

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
    track_start "$pid" "$dir/tansu.pid" "$dir/tansu.log" tansu "$START_TIMEOUT"
    echo "$bootstrap" >"$dir/bootstrap"

    await_start 0.2 "port $port not open" port_open "$port"
    await_start 0.5 "no Kafka metadata from $bootstrap" \
        quiet "$python" "$scripts_dir/kafka_check.py" metadata "$bootstrap"
    log "tansu pid $pid serving $bootstrap (storage $dir/tansu.db)"
    echo "$bootstrap"
}

cmd_stop() {
    local dir
    dir="$(workdir_arg "${1:-}")"
    case "$STOP_MODE" in
        kill | graceful) ;;
        *) die "TANSU_STOP_MODE must be kill or graceful, not $STOP_MODE" ;;
    esac
    stop_tracked "$dir" tansu tansu "$STOP_MODE" "$STOP_TIMEOUT" tansu
    # The pid can look dead (zombie leader) while other threads still hold
    # the listening socket for a moment.
    if [[ -s "$dir/bootstrap" ]]; then
        port_free_within "$(cut -d: -f2 "$dir/bootstrap")" 100 || true
    fi
}

cmd_create_topic() {
    [[ $# -eq 3 ]] || usage
    local dir python
    dir="$(workdir_arg "$1")"
    [[ -s "$dir/bootstrap" ]] || die "no bootstrap file in $dir; start tansu first"
    python="$(test_python)"
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
