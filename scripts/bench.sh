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
# With --extra, once, against the hub (new; not yet run end to end), at rates derived from the hub's
# median throughput M of the rounds:
#   sim-half / hub-half   the Shahkar simulator directly (plain HTTP, the provider's own
#                         latency) and the hub, both paced at M/2: the hub's added latency
#   hub-light / overload  the hub at M/10 (unloaded) and at 4 x M with 256 in flight,
#                         clients honouring RetryInfo: what the hub sheds, and the p99 of
#                         what it accepts against the unloaded p99
#   many                  a third hub whose policy has 1,000 more agencies, each with its own
#                         certificate and connection: peak RSS (VmHWM)
#
# Rounds alternate between the servers so that machine noise hits each alike. Prints one
# JSON line per run, then a table of medians and the ratios. Never part of the test command.
#
# Usage: scripts/bench.sh [--rounds N] [--seconds S] [--connections C] [--concurrency K]
#                         [--skip-events] [--extra] [--keep DIR]
# Needs nginx (installs the Debian package when missing) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
proj=$(pwd)

rounds=2 secs=10 conn=4 conc=64 events=1 extra=0 keep=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --seconds) secs=$2; shift 2 ;;
    --connections) conn=$2; shift 2 ;;
    --concurrency) conc=$2; shift 2 ;;
    --skip-events) events=0; shift ;;
    --extra) extra=1; shift ;;
    --keep) keep=$2; shift 2 ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
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
M_PATH=/tabadol.v1.Shahkar/MatchMobile
MTLS=(--ca "$D/ca.crt" --cert "$D/agencies/cbi.crt" --key "$D/agencies/cbi.key" --server-name localhost)
D2=$work/durable/pki   # the durable hub made its own development PKI
MTLS2=(--ca "$D2/ca.crt" --cert "$D2/agencies/cbi.crt" --key "$D2/agencies/cbi.key" --server-name localhost)
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
peak_rss() { awk '/VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

run() { # name, pid whose RSS to report (or 0), then load args
  local name=$1 pid=$2; shift 2
  local out
  out=$("$R/bench-load" --body-hex "$BODY" --connections "$conn" --concurrency "$conc" \
    --duration "$secs" "$@" 2>&1 | tail -1)
  echo "{\"run\":\"$name\",\"rss_kb\":$(rss "$pid"),$(echo "$out" | sed 's/^{//')"
}

for r in $(seq 1 "$rounds"); do
  run hub "${pids[0]}" --method $M_PATH --target 127.0.0.1:$HP "${MTLS[@]}"
  run bare 0 --method $M_PATH --target 127.0.0.1:$EP "${MTLS[@]}"
  run nginx 0 --method $M_PATH --target 127.0.0.1:$NP "${MTLS[@]}"
  run durable "${pids[1]}" --method $M_PATH --target 127.0.0.1:$DP "${MTLS2[@]}"
  if [ "$events" = 1 ]; then
    out=$("$R/bench-events" --target 127.0.0.1:$DP --dir "$work/durable" --publishers 16 \
      --duration "$secs" 2>&1 | tail -1)
    echo "{\"run\":\"events\",$(echo "$out" | sed 's/^{//')"
  fi
done | tee "$work/runs.jsonl"

if [ "$extra" = 1 ]; then
  M=$(python3 -c "import json,statistics as st;xs=[json.loads(l)['rps'] for l in open('$work/runs.jsonl') if '\"run\":\"hub\"' in l];print(int(st.median(xs)) if xs else 0)")
  [ "$M" -gt 0 ] || { echo "bench.sh: no hub run to derive rates from" >&2; exit 1; }
  SIM=$(sed -n 's/.*providers: shahkar \([^,]*\),.*/\1/p' "$work/hub.log" | head -1)
  [ -n "$SIM" ] || { echo "bench.sh: no Shahkar simulator address in hub.log" >&2; exit 1; }
  # The many-agencies hub: 1,000 more agencies, each with a grant on MatchMobile.
  polm=$work/policy-many
  cp -r "$pol" "$polm"
  python3 - "$polm" <<'PY'
import sys
d = sys.argv[1]
with open(f"{d}/agencies.yaml", "a") as f:
    for i in range(1000):
        f.write(f"  - id: bench-{i}\n    name_fa: دستگاه آزمون {i}\n    name_en: Benchmark agency {i}\n"
                f"    certificate: {{ common_name: bench-{i}.agency.tabadol.ir }}\n")
with open(f"{d}/grants.yaml", "a") as f:
    for i in range(1000):
        f.write(f"  - id: bench-{i}-shahkar\n    agency: bench-{i}\n    service: cra.shahkar.match\n"
                f"    fields: [matched]\n    purposes: [kyc]\n    approved:\n"
                f"      body: interoperability-working-group\n      session: 26\n      date: 1400/08/18\n"
                f"      item: BENCHMARK ONLY\n")
PY
  MP=$(port)
  "$R/tabadol" dev --dir "$work/many" --listen 127.0.0.1:$MP --policy "$polm" >"$work/many.log" 2>&1 &
  pids+=($!)
  wait_port $MP "many-agencies hub" "$work/many.log"
  many_pid=${pids[-1]}
  {
    run sim-half 0 --http-post "$SIM/api/shahkar/v1/match" \
      --http-json "{\"nationalCode\":\"$NC\",\"mobile\":\"$MOB\"}" --rate $((M / 2))
    run hub-half "${pids[0]}" --method $M_PATH --target 127.0.0.1:$HP "${MTLS[@]}" --rate $((M / 2))
    run hub-light "${pids[0]}" --method $M_PATH --target 127.0.0.1:$HP "${MTLS[@]}" --concurrency 8 --rate $((M / 10))
    run overload "${pids[0]}" --method $M_PATH --target 127.0.0.1:$HP "${MTLS[@]}" --concurrency 256 \
      --rate $((M * 4)) --honour-retry-info
    out=$("$R/bench-load" --method $M_PATH --body-hex "$BODY" --concurrency "$conc" --duration "$secs" \
      --target 127.0.0.1:$MP --ca "$work/many/pki/ca.crt" --server-name localhost \
      --identities "$work/many/pki/agencies" --agencies 1000 2>&1 | tail -1)
    echo "{\"run\":\"many\",\"peak_rss_kb\":$(peak_rss "$many_pid"),\"rss_kb\":$(rss "$many_pid"),$(echo "$out" | sed 's/^{//')"
  } | tee -a "$work/runs.jsonl"
fi

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
one = lambda name: by.get(name, [None])[0]
sim, half = one("sim-half"), one("hub-half")
if sim and half:
    print(f"added latency at half load ({hub / 2:,.0f} calls/s): hub p50 {half['p50_us'] / 1000:.2f} ms - "
          f"simulator's own p50 {sim['p50_us'] / 1000:.2f} ms = {(half['p50_us'] - sim['p50_us']) / 1000:.2f} ms "
          f"(p99 {half['p99_us'] / 1000:.1f} vs {sim['p99_us'] / 1000:.1f} ms)")
light, over = one("hub-light"), one("overload")
if light and over:
    secs_o = over.get("duration_s") or 1
    shed = sum(v for k, v in over.get("error_codes", {}).items() if k in ("8", "14"))
    print(f"overload (4 x {hub:,.0f} calls/s offered, 256 in flight, RetryInfo honoured): "
          f"{over['ok'] / secs_o:,.0f} accepted/s, {shed / secs_o:,.0f} shed/s; accepted p99 "
          f"{over['p99_us'] / 1000:.1f} ms vs unloaded p99 {light['p99_us'] / 1000:.1f} ms "
          f"= {over['p99_us'] / max(light['p99_us'], 1):.2f} x")
many = one("many")
if many:
    print(f"1,000 agencies, one connection each: peak RSS {many['peak_rss_kb'] / 1024:.0f} MB "
          f"({many['rps']:,.0f} calls/s, {many['errors']} errors)")
PY
