#!/usr/bin/env bash
# Manages an S3-compatible server (moto's, PyPI `moto[s3]` with Flask) for
# ticklake's object-storage tests: a real HTTP server speaking the S3 API,
# reached by the same clients as AWS (object_store in ticklake, pyarrow's
# S3 file system in pyiceberg, boto3).
#
#   s3.sh start <workdir> [bucket]
#       start a server on a free 127.0.0.1 port, wait until it answers,
#       create <bucket> (default `ticklake`), print the endpoint URL
#       (http://127.0.0.1:<port>). Files in <workdir>: s3.pid, endpoint,
#       s3.log.
#   s3.sh stop <workdir>
#       stop the server. It keeps its objects in memory: they go with it.
#
# Any access key and secret are accepted; the tests use the region
# us-east-1 and path-style addressing (http://127.0.0.1:<port>/<bucket>/).
# moto rather than a Rust server such as s3s-fs: it is a pip install of a
# few seconds into the test virtualenv (scripts/requirements-test.txt),
# where a cargo install costs minutes of a cold CI run.
set -euo pipefail

START_TIMEOUT="${S3_START_TIMEOUT:-60}"
scripts_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { echo "s3.sh: $*" >&2; }
die() {
    log "$*"
    exit 1
}

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# The test virtualenv's Python, where moto is installed.
test_python() {
    if [[ -n "${TICKLAKE_TEST_PYTHON:-}" ]]; then
        echo "$TICKLAKE_TEST_PYTHON"
    else
        "$scripts_dir/setup-python.sh"
    fi
}

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

# A live process (not a zombie) whose command line names moto: a pid file
# may outlive its process, and the pid may since have been reused.
moto_alive() {
    local state
    state="$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
    [[ -n "$state" && "$state" != "Z" ]] || return 1
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q moto
}

# PUT /<bucket>: creates the bucket (moto takes unsigned requests). 200 for
# a new bucket and for one this server already has.
create_bucket() {
    python3 - "$1" "$2" <<'EOF'
import sys, urllib.request
endpoint, bucket = sys.argv[1], sys.argv[2]
req = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")
with urllib.request.urlopen(req, timeout=5) as r:
    if r.status != 200:
        sys.exit(f"creating bucket {bucket}: HTTP {r.status}")
EOF
}

answers() {
    python3 -c 'import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/", timeout=2)' "$1" >/dev/null 2>&1
}

cmd_start() {
    local dir bucket port endpoint pid python
    dir="$(workdir_arg "${1:-}")"
    bucket="${2:-ticklake}"
    if [[ -f "$dir/s3.pid" ]] && moto_alive "$(cat "$dir/s3.pid")"; then
        die "an S3 server is already running in $dir (pid $(cat "$dir/s3.pid"))"
    fi
    python="$(test_python)"
    "$python" -c 'import moto.server, flask' 2>/dev/null ||
        die "$python lacks moto[s3] and flask (run scripts/setup-python.sh)"
    port="$(free_port)"
    endpoint="http://127.0.0.1:$port"
    echo "=== s3 start $(date -u +%FT%TZ) on $endpoint" >>"$dir/s3.log"
    # Detached from the caller's output, so a harness capturing this
    # script's stdout does not wait for the server to exit.
    "$python" -m moto.server -H 127.0.0.1 -p "$port" </dev/null >>"$dir/s3.log" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/s3.pid"
    echo "$endpoint" >"$dir/endpoint"
    local deadline=$((SECONDS + START_TIMEOUT))
    until answers "$endpoint"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$dir/s3.log" >&2
            die "the S3 server exited during startup"
        fi
        if ((SECONDS >= deadline)); then
            kill -KILL "$pid" 2>/dev/null || true
            tail -n 20 "$dir/s3.log" >&2
            die "no answer from $endpoint after ${START_TIMEOUT} s"
        fi
        sleep 0.2
    done
    create_bucket "$endpoint" "$bucket" || die "could not create bucket $bucket at $endpoint"
    log "S3 server pid $pid serving $endpoint, bucket $bucket"
    echo "$endpoint"
}

cmd_stop() {
    local dir pid
    dir="$(workdir_arg "${1:-}")"
    if [[ ! -f "$dir/s3.pid" ]]; then
        log "no s3.pid in $dir; nothing to stop"
        return 0
    fi
    pid="$(cat "$dir/s3.pid")"
    if moto_alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        local i
        for ((i = 0; i < 50; i++)); do
            moto_alive "$pid" || break
            sleep 0.1
        done
        if moto_alive "$pid"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
        log "stopped S3 server pid $pid"
    fi
    rm -f "$dir/s3.pid"
    echo "=== s3 stopped $(date -u +%FT%TZ)" >>"$dir/s3.log"
}

case "${1:-}" in
    start) cmd_start "${2:-}" "${3:-}" ;;
    stop) cmd_stop "${2:-}" ;;
    *) usage ;;
esac
