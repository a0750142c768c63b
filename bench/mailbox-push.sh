#!/usr/bin/env bash
# One mailbox-push benchmark round against one cluster-mode node on a fresh local Redis.
# usage: bench/mailbox-push.sh GATEWAY_BIN LABEL  (after cargo build --release -p loadgen)
# Prints calls/s, RPC p99, errors, and the CPU Redis and the gateway spent on 20,000 calls
# of SendDirect with ttl_seconds to 200 users who never connect (each call keeps its message).
set -euo pipefail
GW=$1; LABEL=$2; LG="$(cd "$(dirname "$0")/.." && pwd)/target/release/loadgen"
RP=$((20000 + RANDOM % 1000)); HP=$((21000 + RANDOM % 1000)); GP=$((22000 + RANDOM % 1000)); MP=$((23000 + RANDOM % 1000))
D=$(mktemp -d)
redis-server --port $RP --save '' --appendonly no --dir $D >/dev/null 2>&1 &
RPID=$!
sleep 0.5
$GW --http-addr 127.0.0.1:$HP --grpc-addr 127.0.0.1:$GP --metrics-addr 127.0.0.1:$MP --node-id mb-1 \
  --redis-url redis://127.0.0.1:$RP --mailbox-max-total 100000 --max-pending-sessions-per-ip 1024 >$D/gw.log 2>&1 &
GPID=$!
trap 'kill $GPID $RPID 2>/dev/null; wait 2>/dev/null; rm -rf $D' EXIT
for _ in $(seq 50); do curl -sf http://127.0.0.1:$MP/readyz >/dev/null 2>&1 && break; sleep 0.2; done
cpu() { redis-cli -p $RP info cpu | awk -F: '/used_cpu_(sys|user):/ {s+=$2} END {printf "%.3f", s}'; }
c0=$(cpu); g0=$(awk '{print $14+$15}' /proc/$GPID/stat)
$LG direct --http 127.0.0.1:$HP --grpc 127.0.0.1:$GP --users 200 --messages 20000 --duration 3 \
  --payload-bytes 100 --grpc-conns 4 --concurrency 64 --ttl-seconds 60 --offline-receivers --quiet --json-out $D/out.json >$D/lg.log 2>&1 || { tail -5 $D/lg.log; tail -5 $D/gw.log; }
c1=$(cpu); g1=$(awk '{print $14+$15}' /proc/$GPID/stat)
python3 - "$D/out.json" "$c0" "$c1" "$g0" "$g1" "$LABEL" <<'PY'
import json,sys
j=json.loads(open(sys.argv[1]).read().splitlines()[-1])
calls=j.get("sent") or j.get("calls") or j.get("ok")
print(sys.argv[6], {k:j[k] for k in j if k in ("rpc_per_s","errors","sent_ok","offline_responses")}, "p99_us", j["rpc_latency_us"]["p99"], "redis_cpu_s=%.3f"%(float(sys.argv[3])-float(sys.argv[2])), "gw_cpu_ticks=%d"%(int(sys.argv[5])-int(sys.argv[4])))
PY
