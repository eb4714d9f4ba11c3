#!/usr/bin/env bash
# The one test command: formatting, lints, and every test target.
#
# Integration tests need a Kafka-API broker and Python helpers; they read
#   TICKLAKE_TEST_BROKERS    bootstrap address of a running Tansu broker
#   TICKLAKE_TEST_TANSU_DIR  its workdir (for scripts/tansu.sh stop/start)
#   TICKLAKE_TEST_PYTHON     python with confluent-kafka (and its Avro and
#                            schema-registry parts) and pyiceberg
#   TICKLAKE_TEST_SCRIPTS    this scripts/ directory
#   TICKLAKE_TEST_S3_ENDPOINT an S3-compatible server with bucket `ticklake`
#                            (scripts/s3.sh); started here when unset
#   TICKLAKE_TEST_POSTGRES_URI  a PostgreSQL database (scripts/postgres.sh);
#                            started here in a temp dir when unset
# and fail when they are missing. If TICKLAKE_TEST_BROKERS is unset this
# script sets all of that up itself (venv, Tansu install, a broker in a temp
# dir that is stopped on exit), so on a fresh machine `scripts/test.sh` is
# all a developer runs. .ci/run starts the broker itself and then calls this.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"

tansu_dir=""
s3_dir=""
postgres_dir=""
cleanup() {
    local rc=$?
    if [[ -n "$s3_dir" ]]; then
        scripts/s3.sh stop "$s3_dir" || true
        rm -rf "$s3_dir"
    fi
    if [[ -n "$postgres_dir" ]]; then
        scripts/postgres.sh stop "$postgres_dir" || true
        rm -rf "$postgres_dir"
    fi
    if [[ -n "$tansu_dir" ]]; then
        scripts/tansu.sh stop "$tansu_dir" || true
        if [[ $rc -eq 0 ]]; then
            rm -rf "$tansu_dir"
        else
            echo "test.sh: kept broker workdir for inspection: $tansu_dir (see tansu.log)" >&2
        fi
    fi
    exit "$rc"
}

# Debian packages the build and tests need (only those missing).
scripts/system-packages.sh

if [[ -z "${TICKLAKE_TEST_BROKERS:-}" ]]; then
    # Plain assignments (not `export X=$(...)`) so set -e sees failures.
    TICKLAKE_TEST_PYTHON="$(scripts/setup-python.sh)"
    export TICKLAKE_TEST_PYTHON
    scripts/tansu.sh install
    tansu_dir="$(mktemp -d "${TMPDIR:-/tmp}/ticklake-tansu.XXXXXX")"
    trap cleanup EXIT
    TICKLAKE_TEST_BROKERS="$(scripts/tansu.sh start "$tansu_dir")"
    export TICKLAKE_TEST_BROKERS
    export TICKLAKE_TEST_TANSU_DIR="$tansu_dir"
fi
# Fill in what a caller that started its own broker may have left out.
if [[ -z "${TICKLAKE_TEST_PYTHON:-}" ]]; then
    TICKLAKE_TEST_PYTHON="$(scripts/setup-python.sh)"
fi
export TICKLAKE_TEST_PYTHON
export TICKLAKE_TEST_SCRIPTS="${TICKLAKE_TEST_SCRIPTS:-$repo_root/scripts}"
if [[ -z "${TICKLAKE_TEST_S3_ENDPOINT:-}" ]]; then
    s3_dir="$(mktemp -d "${TMPDIR:-/tmp}/ticklake-s3.XXXXXX")"
    trap cleanup EXIT
    TICKLAKE_TEST_S3_ENDPOINT="$(scripts/s3.sh start "$s3_dir")"
    export TICKLAKE_TEST_S3_ENDPOINT
fi
if [[ -z "${TICKLAKE_TEST_POSTGRES_URI:-}" ]]; then
    postgres_dir="$(mktemp -d "${TMPDIR:-/tmp}/ticklake-postgres.XXXXXX")"
    trap cleanup EXIT
    TICKLAKE_TEST_POSTGRES_URI="$(scripts/postgres.sh start "$postgres_dir")"
    export TICKLAKE_TEST_POSTGRES_URI
fi

echo "test.sh: brokers=$TICKLAKE_TEST_BROKERS tansu_dir=${TICKLAKE_TEST_TANSU_DIR:-} s3=$TICKLAKE_TEST_S3_ENDPOINT postgres=$TICKLAKE_TEST_POSTGRES_URI python=$TICKLAKE_TEST_PYTHON" >&2

python3 scripts/layout_check.py
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# --no-fail-fast: one failing test binary must not hide the results of the
# others in a CI run. Two test threads through the environment, not
# `-- --test-threads=2`: arguments after `--` go to every target, and the
# criterion bench (`benches/stages.rs`, run once as a check) refuses
# libtest's flags.
RUST_TEST_THREADS=2 cargo test --all-targets --no-fail-fast
