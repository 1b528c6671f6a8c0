#!/usr/bin/env bash
# Issue 8's benchmark, one command: side-by-side inquiry throughput on this machine, in one run.
#
#   hub     `tabadol dev` (mTLS, validation, policy, limits, Shahkar simulator over loopback
#           HTTP, audit) with the shipped policy minus its `rate:` lines, MatchMobile as cbi
#   durable the same hub with `--durable-audit` (every answer waits for its record's fsync)
#   bare    bench-echo over mTLS: TLS + HTTP/2 + gRPC framing only (the limit)
#   nginx   nginx grpc_pass, client certificate verified, in front of a plaintext bench-echo
#   events  bench-events: Events/Publish durable acknowledgements/s with 16 publishers
#
# Rounds alternate between the servers so that machine noise hits each alike. Prints one
# JSON line per run, then a table of medians and the ratios. Never part of the test command.
#
# Usage: scripts/bench.sh [--rounds N] [--seconds S] [--connections C] [--concurrency K]
#                         [--skip-events] [--keep DIR]
# Needs nginx (installs the Debian package when missing) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
proj=$(pwd)

rounds=2 secs=10 conn=4 conc=64 events=1 keep=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --seconds) secs=$2; shift 2 ;;
    --connections) conn=$2; shift 2 ;;
    --concurrency) conc=$2; shift 2 ;;
    --skip-events) events=0; shift ;;
    --keep) keep=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

echo "== building in release (tabadol, bench-load, bench-echo, bench-events)" >&2
cargo build --release -q -p tabadol-hub --bin tabadol -p tabadol-benches --bins
R=$proj/target/release

work=$(mktemp -d /tmp/tabadol-bench.XXXXXX)
pids=()
nginx_pid=""
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "$nginx_pid" ] && bash "$proj/benches/nginx-grpc.sh" stop "$nginx_pid" >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  if [ -n "$keep" ]; then mkdir -p "$keep" && cp -r "$work"/*.log "$work"/runs.jsonl "$keep"/ 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { # port, name, log
  for _ in $(seq 1 300); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "bench.sh: $2 did not start listening on 127.0.0.1:$1; its log:" >&2; cat "$3" >&2; exit 1
}

pol=$work/policy
cp -r policy/national "$pol"
sed -i '/^ *rate: /d; /rate: {/d' "$pol"/*.yaml

HP=$(port); DP=$(port); EP=$(port); PP=$(port); NP=$(port)
"$R/tabadol" dev --dir "$work/hub" --listen 127.0.0.1:$HP --policy "$pol" >"$work/hub.log" 2>&1 &
pids+=($!)
"$R/tabadol" dev --dir "$work/durable" --listen 127.0.0.1:$DP --policy "$pol" --durable-audit \
  >"$work/durable.log" 2>&1 &
pids+=($!)
wait_port $HP hub "$work/hub.log"
wait_port $DP "durable hub" "$work/durable.log"

# The baselines use the hub's development PKI: same certificates, same key types.
D=$work/hub/pki
"$R/bench-echo" --listen 127.0.0.1:$EP --reply-hex 0801 \
  --tls-cert "$D/hub.crt" --tls-key "$D/hub.key" --client-ca "$D/ca.crt" >"$work/echo-tls.log" 2>&1 &
pids+=($!)
"$R/bench-echo" --listen 127.0.0.1:$PP --reply-hex 0801 >"$work/echo.log" 2>&1 &
pids+=($!)
wait_port $EP "bench-echo (mTLS)" "$work/echo-tls.log"
wait_port $PP "bench-echo (h2c)" "$work/echo.log"
nginx_pid=$(bash benches/nginx-grpc.sh $NP 127.0.0.1:$PP "$D/hub.crt" "$D/hub.key" "$D/ca.crt")
nginx_version=$( (PATH=$PATH:/usr/sbin nginx -v) 2>&1 | sed -n 's|.*nginx/||p')

read -r NC MOB < <(python3 -c "import json;p=json.load(open('$work/hub/samples.json'))['persons_alive'][0];print(p['national_code'],p['mobile'])")
BODY=$(python3 - "$NC" "$MOB" <<'PY'
import sys
def ld(f, b):
    b = b.encode() if isinstance(b, str) else b
    return bytes([(f << 3) | 2, len(b)]) + b
print((ld(1, ld(1, "BENCH-0000001") + ld(2, "kyc")) + ld(2, sys.argv[1]) + ld(3, sys.argv[2])).hex())
PY
)
M=/tabadol.v1.Shahkar/MatchMobile
MTLS=(--ca "$D/ca.crt" --cert "$D/agencies/cbi.crt" --key "$D/agencies/cbi.key" --server-name localhost)
D2=$work/durable/pki   # the durable hub made its own development PKI
MTLS2=(--ca "$D2/ca.crt" --cert "$D2/agencies/cbi.crt" --key "$D2/agencies/cbi.key" --server-name localhost)
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

run() { # name, pid whose RSS to report (or 0), then load args
  local name=$1 pid=$2; shift 2
  local out
  out=$("$R/bench-load" --method $M --body-hex "$BODY" --connections "$conn" --concurrency "$conc" \
    --duration "$secs" "$@" 2>&1 | tail -1)
  echo "{\"run\":\"$name\",\"rss_kb\":$(rss "$pid"),$(echo "$out" | sed 's/^{//')"
}

for r in $(seq 1 "$rounds"); do
  run hub "${pids[0]}" --target 127.0.0.1:$HP "${MTLS[@]}"
  run bare 0 --target 127.0.0.1:$EP "${MTLS[@]}"
  run nginx 0 --target 127.0.0.1:$NP "${MTLS[@]}"
  run durable "${pids[1]}" --target 127.0.0.1:$DP "${MTLS2[@]}"
  if [ "$events" = 1 ]; then
    out=$("$R/bench-events" --target 127.0.0.1:$DP --dir "$work/durable" --publishers 16 \
      --duration "$secs" 2>&1 | tail -1)
    echo "{\"run\":\"events\",$(echo "$out" | sed 's/^{//')"
  fi
done | tee "$work/runs.jsonl"

python3 - "$work/runs.jsonl" "$nginx_version" "$rounds" "$secs" "$conn" "$conc" <<'PY'
import json, sys, statistics as st
path, nginx_version, rounds, secs, conn, conc = sys.argv[1:]
runs = []
for line in open(path):
    line = line.strip()
    if not line.startswith("{"):
        continue
    try:
        runs.append(json.loads(line))
    except json.JSONDecodeError:
        print("unparsed run:", line, file=sys.stderr)
by = {}
for r in runs:
    by.setdefault(r["run"], []).append(r)
def med(name, key):
    xs = [x.get(key) for x in by.get(name, []) if isinstance(x.get(key), (int, float))]
    return st.median(xs) if xs else None
print(f"\n{rounds} rounds x {secs} s, {conn} connections, {conc} calls in flight; nginx {nginx_version}")
print(f"{'server':8} {'rps (median)':>13} {'p50 ms':>8} {'p99 ms':>8} {'RSS MB':>7} {'errors':>7}")
for name in ["hub", "durable", "bare", "nginx"]:
    if name not in by:
        continue
    rps, p50, p99 = med(name, "rps"), med(name, "p50_us"), med(name, "p99_us")
    rss = med(name, "rss_kb")
    errs = sum(x.get("errors", 0) for x in by[name])
    f = lambda v, d=1000: "-" if v is None else f"{v / d:.1f}"
    print(f"{name:8} {rps or 0:>13,.0f} {f(p50):>8} {f(p99):>8} {f(rss, 1024) if rss else '-':>7} {errs:>7}")
hub = med("hub", "rps") or 0
for base in ["bare", "nginx"]:
    b = med(base, "rps")
    if b:
        print(f"hub/{base} = {hub / b:.2f}")
d = med("durable", "rps")
if d and hub:
    print(f"durable/hub = {d / hub:.2f}")
if "events" in by:
    print(f"events: {med('events', 'acks_per_s') or 0:,.0f} durable Publish acknowledgements/s (16 publishers), "
          f"p99 {(med('events', 'p99_us') or 0) / 1000:.1f} ms")
PY
