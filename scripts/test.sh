#!/usr/bin/env bash
# The test command of the README: every crate's tests, against SQLite, the local PostgreSQL, Redis and NATS.
set -euo pipefail
cd "$(dirname "$0")/.."
export TENFOLD_TEST_POSTGRES_URL="${TENFOLD_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export TENFOLD_TEST_REDIS_URL="${TENFOLD_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
export TENFOLD_TEST_NATS_URL="${TENFOLD_TEST_NATS_URL:-nats://127.0.0.1:4222}"
# The video tests run ffmpeg and ffprobe (Debian package), as video workers do; the storefront's browser
# tests drive Debian's headless Chromium through chromedriver.
missing=()
command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1 || missing+=(ffmpeg)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if ((${#missing[@]})); then
    if [[ "$(id -u)" == 0 ]]; then
        echo "scripts/test.sh: installing ${missing[*]} (the video and browser tests need them)" >&2
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; then
            apt-get update -q >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
        fi
    else
        echo "scripts/test.sh: the video and browser tests need: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi
exec cargo test --workspace --locked "$@"
