# shellcheck shell=bash
# Shared by the scripts that run test servers (tansu.sh, s3.sh,
# postgres.sh): messages, work directories, ports, and starting and
# stopping a process recorded in a pid file. Sourced, not run: a script
# sources it right after its `set -euo pipefail`, whose header comment
# (its lines 2 to that `set`) `usage` prints.

scripts_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The sourcing script, by absolute path: postgres.sh changes directory
# before it may need its header.
lib_script="$scripts_dir/$(basename "${BASH_SOURCE[1]}")"

log() { echo "${lib_script##*/}: $*" >&2; }
die() {
    log "$*"
    exit 1
}

# Like die, followed by the end of <logfile>, which usually says why.
die_with_log() {
    local logfile=$1
    shift
    log "$*"
    if [[ -f "$logfile" ]]; then
        log "last lines of $logfile:"
        tail -n 40 "$logfile" >&2
    fi
    exit 1
}

usage() {
    sed -n '2,/^set -euo/p' "$lib_script" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# The test virtualenv's Python (moto, confluent-kafka): the one the tests
# use, or the project venv.
test_python() {
    if [[ -n "${TICKLAKE_TEST_PYTHON:-}" ]]; then
        echo "$TICKLAKE_TEST_PYTHON"
    else
        "$scripts_dir/setup-python.sh"
    fi
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

# Runs <command...> with its output discarded: for polls whose failures are
# expected until the server is up.
quiet() {
    "$@" >/dev/null 2>&1
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# True once nothing listens on 127.0.0.1:<port>, polled for up to <tenths>
# tenths of a second: a server that has just exited can hold its socket a
# moment longer.
port_free_within() {
    local i
    for ((i = 0; i < $2; i++)); do
        port_open "$1" || return 0
        sleep 0.1
    done
    ! port_open "$1"
}

# True while <pid> is a live process (not a zombie: an orphaned server stays
# visible to kill -0 until someone reaps it).
proc_alive() {
    local state
    state="$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
    [[ -n "$state" && "$state" != "Z" ]]
}

# proc_alive, and its command line contains <word>: a pid file may outlive
# its process, and the pid may since have been reused. Only for pids from a
# pid file: right after fork, the command line is briefly unreadable while
# exec replaces the subshell.
pid_runs() {
    proc_alive "$1" && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q -- "$2"
}

# The server being started, for await_start and fail_start: one per script run.
start_pid=""
start_pidfile=""
start_log=""
start_name=""
start_timeout=0
start_deadline=0

# Records a server just launched in the background: writes <pid> to
# <pidfile>; <logfile> is shown if it fails to start, <name> names it in
# messages, and its <timeout> seconds to answer count from now.
track_start() {
    start_pid=$1 start_pidfile=$2 start_log=$3 start_name=$4 start_timeout=$5
    start_deadline=$((SECONDS + start_timeout))
    echo "$start_pid" >"$start_pidfile"
}

# Runs <command...> every <interval> seconds until it succeeds. Gives up
# through fail_start if the server exits first, or with "<what> after
# <timeout> s" once its time is up.
await_start() {
    local interval=$1 what=$2
    shift 2
    until "$@"; do
        proc_alive "$start_pid" || fail_start "$start_name exited during startup"
        ((SECONDS < start_deadline)) || fail_start "$what after ${start_timeout} s"
        sleep "$interval"
    done
}

# A start that failed leaves nothing running and no pid file, so the next
# start begins clean; the log stays for the post-mortem.
fail_start() {
    if proc_alive "$start_pid"; then
        kill -KILL "$start_pid" 2>/dev/null || true
    fi
    rm -f "$start_pidfile"
    die_with_log "$start_log" "$*"
}

# Ends <pid>: with SIGKILL at once (<mode> kill), or with SIGTERM and then
# SIGKILL if it outlives <timeout> seconds (<mode> graceful). Returns once
# the process is gone, so a start right after this can bind its port.
# <name> names it in messages.
stop_pid() {
    local pid=$1 mode=$2 timeout=$3 name=$4
    if [[ "$mode" == graceful ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + timeout))
        while proc_alive "$pid" && ((SECONDS < deadline)); do
            sleep 0.2
        done
        if proc_alive "$pid"; then
            log "$name pid $pid still running ${timeout} s after SIGTERM; sending SIGKILL"
        fi
    fi
    if proc_alive "$pid"; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    while proc_alive "$pid"; do
        sleep 0.1
    done
}

# Stops the server whose pid <dir>/<name>.pid holds, if that pid still runs
# <match> (see pid_runs), by stop_pid with <mode> and <timeout>; then
# forgets the pid and marks the end in <dir>/<name>.log. Without a pid file
# there is nothing to stop, and it says so.
stop_tracked() {
    local dir=$1 name=$2 match=$3 mode=$4 timeout=$5 label=$6 pid
    if [[ ! -f "$dir/$name.pid" ]]; then
        log "no $name.pid in $dir; nothing to stop"
        return 0
    fi
    pid="$(cat "$dir/$name.pid")"
    if pid_runs "$pid" "$match"; then
        stop_pid "$pid" "$mode" "$timeout" "$label"
        log "stopped $label pid $pid ($mode)"
    fi
    rm -f "$dir/$name.pid"
    echo "=== $name stopped $(date -u +%FT%TZ)" >>"$dir/$name.log"
}
