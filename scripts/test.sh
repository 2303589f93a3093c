#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, then runs
# formatting and lint checks, Rust unit/integration/sqllogictest tests, and the end-to-end tests
# with real clients (ADBC Flight SQL, DuckDB, deltalake) against the real binary.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n== %s ==\n' "$*"; }

step "system tools (openssl makes the TLS test's certificate; chromium runs the console's tests; poppler-utils reads the daily report's PDF)"
missing=""
command -v openssl >/dev/null || missing="$missing openssl"
[ -x /usr/bin/chromium ] || missing="$missing chromium"
command -v pdftotext >/dev/null || missing="$missing poppler-utils"
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi

step "Python test environment (.venv)"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt

step "Superset test environment (.venv-superset: its pins differ from the other clients')"
if [ ! -x .venv-superset/bin/python ]; then
  python3 -m venv .venv-superset
fi
.venv-superset/bin/pip install --quiet --disable-pip-version-check -r tests/requirements-superset.txt

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (unit, integration, sqllogictest)"
cargo test --workspace --locked

step "fuzz the ingest decode + validation path (bounded: 5000 cases per property, ~15 s)"
PROPTEST_CASES="${PROPTEST_CASES:-5000}" cargo test --workspace --locked --test fuzz_ingest

step "end-to-end tests (pytest)"
VIGIE_BIN="$CARGO_TARGET_DIR/debug/vigie" .venv/bin/pytest -q -o faulthandler_timeout=600 -W "ignore:Cannot disable autocommit" tests/e2e

step "all tests passed"
