#!/usr/bin/env bash
# The test command of the README: every crate's tests, against SQLite and the local PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
export TENFOLD_TEST_POSTGRES_URL="${TENFOLD_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export TENFOLD_TEST_REDIS_URL="${TENFOLD_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
exec cargo test --workspace --locked "$@"
