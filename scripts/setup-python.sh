#!/usr/bin/env bash
# Creates (or refreshes) the virtualenv with the Python test tooling pinned in
# scripts/requirements-test.txt, then prints the venv's python path on stdout.
#
#   TICKLAKE_VENV   venv location (default: .venv, relative to the repo root)
#   PYTHON          interpreter used to create it (default: python3, >= 3.10)
#
# Idempotent: a stamp file inside the venv records the hash of the
# requirements file, so a venv that is already up to date costs one sha256sum.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

requirements="scripts/requirements-test.txt"
venv="${TICKLAKE_VENV:-.venv}"
case "$venv" in
    /*) ;;
    *) venv="$repo_root/$venv" ;;
esac
python="${PYTHON:-python3}"
stamp="$venv/.ticklake-requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"

log() { echo "setup-python: $*" >&2; }

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] &&
    "$venv/bin/python" -c 'import confluent_kafka.schema_registry.avro, fastavro, pyiceberg, pyarrow' 2>/dev/null; then
    echo "$venv/bin/python"
    exit 0
fi

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    log "$python is older than 3.10; set PYTHON to a newer interpreter"
    exit 1
fi

if [[ ! -x "$venv/bin/python" ]]; then
    log "creating virtualenv at $venv"
    if ! "$python" -m venv "$venv" >&2; then
        # Debian's system python3 ships venv (ensurepip) separately.
        if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
            log "python venv module unusable; installing python3-venv"
            rm -rf "$venv"
            DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >&2
            "$python" -m venv "$venv" >&2
        else
            log "cannot create a virtualenv with $python (install python3-venv)"
            exit 1
        fi
    fi
fi

log "installing $requirements"
# --no-input: CI has no stdin. Output goes to stderr: stdout is the result.
"$venv/bin/python" -m pip install --no-input --disable-pip-version-check -q \
    -r "$requirements" >&2
echo "$want" >"$stamp"
echo "$venv/bin/python"
