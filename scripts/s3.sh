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
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

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
    if [[ -f "$dir/s3.pid" ]] && pid_runs "$(cat "$dir/s3.pid")" moto; then
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
    track_start "$pid" "$dir/s3.pid" "$dir/s3.log" "the S3 server" "$START_TIMEOUT"
    echo "$endpoint" >"$dir/endpoint"
    await_start 0.2 "no answer from $endpoint" answers "$endpoint"
    create_bucket "$endpoint" "$bucket" || die "could not create bucket $bucket at $endpoint"
    log "S3 server pid $pid serving $endpoint, bucket $bucket"
    echo "$endpoint"
}

cmd_stop() {
    stop_tracked "$(workdir_arg "${1:-}")" s3 moto graceful 5 "S3 server"
}

case "${1:-}" in
    start) cmd_start "${2:-}" "${3:-}" ;;
    stop) cmd_stop "${2:-}" ;;
    *) usage ;;
esac
