#!/usr/bin/env bash
# One send phase against three gateway nodes on a fresh redis-server, as scripts/bench's
# cluster-peer section runs it, without the peer: TABS tabs (`loadgen tabs`, presence none)
# spread over the nodes, then `loadgen backend` with the arguments given, and the tabs'
# figures (CPU per delivered message of the nodes and of Redis, p99, lost/duplicated) and
# Redis's publish counts.
# Used for the before/after figures of bench/results/CROSSNODE.md ("SendStream").
#
#   bench/crossnode-stream.sh LABEL [loadgen backend arguments...]
#   e.g. bench/crossnode-stream.sh stream-sat --stream --concurrency 384
# Env: GW (gateway binary, default target/release/messaging-gateway), TABS (3000),
# SECS (10), NODE_ENV_VARS (e.g. "TOKIO_WORKER_THREADS=1", passed to each node).
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LABEL="$1"
shift
GW="${GW:-$ROOT/target/release/messaging-gateway}"
LG="$ROOT/target/release/loadgen"
TABS="${TABS:-3000}" SECS="${SECS:-10}"
W="$(mktemp -d)"
base=$((20000 + RANDOM % 20000))
redis-server --port "$base" --bind 127.0.0.1 --save '' --appendonly no --dir "$W" >"$W/redis.log" 2>&1 &
RPID=$!
until [ "$(redis-cli -p "$base" ping 2>/dev/null)" = PONG ]; do sleep 0.1; done
PIDS=() HTTP=() GRPC=()
for i in 1 2 3; do
  h=$((base + 10 * i))
  # shellcheck disable=SC2086
  env ${NODE_ENV_VARS:-} "$GW" --http-addr "127.0.0.1:$h" --grpc-addr "127.0.0.1:$((h + 1))" \
    --metrics-addr "127.0.0.1:$((h + 2))" --node-id "phase-$i" --max-pending-sessions-per-ip 1024 \
    --redis-url "redis://127.0.0.1:$base" >"$W/node$i.log" 2>&1 &
  PIDS+=($!) HTTP+=("$h") GRPC+=($((h + 1)))
done
sleep 1.5
ctl="$W/ctl"
mkdir -p "$ctl"
"$LG" tabs --http "127.0.0.1:${HTTP[0]}" --http-more "127.0.0.1:${HTTP[1]},127.0.0.1:${HTTP[2]}" \
  --grpc "127.0.0.1:${HTTP[0]}" --users "$TABS" --presence-mode none --connect-timeout 60 --hold 2 \
  --server-pids "$(IFS=,; echo "${PIDS[*]}")" --redis-pid "$RPID" --control "$ctl" --phases run \
  --phase-timeout $((SECS + 60)) --drain-timeout 15 --server phase --scenario "$LABEL" \
  --json-out "$W/res.jsonl" --quiet >"$ctl/tabs.out" 2>&1 &
TP=$!
while [ ! -e "$ctl/connected" ]; do sleep 0.1; done
touch "$ctl/run.go"
while [ ! -e "$ctl/run.ready" ]; do sleep 0.05; done
"$LG" backend --grpc "127.0.0.1:${GRPC[0]},127.0.0.1:${GRPC[1]},127.0.0.1:${GRPC[2]}" \
  --users "$TABS" --duration "$SECS" "$@" 2>"$W/backend.err" | tail -1 >"$ctl/run.tmp"
mv "$ctl/run.tmp" "$ctl/run.sent"
while [ ! -e "$ctl/run.done" ]; do sleep 0.1; done
redis-cli -p "$base" info commandstats | grep -E '^cmdstat_(s?publish|evalsha|fcall):' | tr -d '\r'
kill "$TP" "${PIDS[@]}" "$RPID" 2>/dev/null
wait 2>/dev/null
grep -h "\"scenario\":\"$LABEL-run\"" "$W/res.jsonl" | python3 -c '
import sys, json
for line in sys.stdin:
    d = json.loads(line)
    keys = ("cpu_us_per_msg", "servers_cpu_us_per_msg", "redis_cpu_us_per_msg",
            "delivered_per_s", "msgs_per_core_s", "received", "lost", "duplicates")
    print(d["scenario"], {k: d.get(k) for k in keys},
          "p99_us", d.get("delivery_latency_us", {}).get("p99"))'
rm -rf "$W"
