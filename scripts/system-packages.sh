#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need, only those
# missing. Used by scripts/test.sh (so a developer's one test command does
# it too) and by .ci/run.
#
# libssl-dev, pkg-config: native-tls (openssl-sys). zlib1g-dev: rdkafka's
# librdkafka build. libsqlite3-dev: sqlx / the Iceberg SQL catalog.
# prometheus: promtool and the server, for the /metrics scrape test.
# redis-server: the shared dedup (dedup.redis_url); its unit tests and
# tests/hot_standby.rs start servers of their own on free ports.
# postgresql: the server of the SQL catalog on PostgreSQL
# (tests/postgres_catalog.rs), started by scripts/postgres.sh.
#
# Not root, or no apt-get: says what is missing and fails, so a test that
# needs it never runs without it.
set -euo pipefail

packages=(libssl-dev pkg-config zlib1g-dev libsqlite3-dev prometheus redis-server postgresql)
missing=()
for pkg in "${packages[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]} == 0)); then
    echo "system-packages.sh: all present: ${packages[*]}" >&2
    exit 0
fi
if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "system-packages.sh: missing ${missing[*]}; install them (Debian: apt-get install ${missing[*]}) and run again" >&2
    exit 1
fi
echo "system-packages.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >&2
apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
