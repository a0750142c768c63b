#!/usr/bin/env bash
# Cross-node SendDirect at a fixed rate, measured on every process it costs (issue 23, points
# 1 and 2): three gateway nodes on one local redis-server, users on node 1, calls to node 2
# (the bench's cluster-cross-rate), `loadgen direct --rate`. Prints the CPU seconds of each
# node and of Redis over the run, per delivered message, and loadgen's latency lines.
#
#   bench/crossnode.sh BIN_DIR [measure|perf|stat] [RATE|c64] [SECONDS]
#
# RATE: calls per second offered (open loop); c64: 64 calls in flight (saturation). Also
# prints Redis's SPUBLISH calls per message sent (INFO commandstats).
#
# perf: also `perf record -g` of node 1, node 2 and Redis during the run, rendered to flame
#       graphs in $OUT (inferno-collapse-perf | inferno-flamegraph on PATH).
# stat: also `perf stat` of system calls and context switches of each process.
# Run it under `flock /tmp/bench.lock`: the machine is shared.
set -uo pipefail
BIN="${1:?release binary directory}"
MODE="${2:-measure}"
RATE="${3:-1000}"
SECS="${4:-10}"
USERS="${USERS:-500}"
OUT="${OUT:-bench/results}"
TAG="${TAG:-before}"
PORT="${PORT_BASE:-23100}"
WORK="$(mktemp -d /tmp/crossnode.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.3f", ($12 + $13) / hz }' "/proc/$1/stat"; }

redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
REDIS=$!
PIDS+=("$REDIS")
until [ "$(redis-cli -p "$PORT" ping 2>/dev/null)" = PONG ]; do sleep 0.1; done
NODES=()
for i in 1 2 3; do
  "$BIN/messaging-gateway" --http-addr "127.0.0.1:$((PORT + 10 * i))" \
    --grpc-addr "127.0.0.1:$((PORT + 10 * i + 1))" --metrics-addr "127.0.0.1:$((PORT + 10 * i + 2))" \
    --node-id "x-$i" --max-pending-sessions-per-ip 1024 --redis-url "redis://127.0.0.1:$PORT" \
    >"$WORK/node-$i.log" 2>&1 &
  NODES+=("$!")
  PIDS+=("$!")
done
for i in 1 2 3; do
  until (exec 3<>"/dev/tcp/127.0.0.1/$((PORT + 10 * i))") 2>/dev/null; do sleep 0.1; done
done
# RATE c64: 64 calls in flight for SECS (saturation) instead of a fixed rate.
if [ "$RATE" = c64 ]; then
  MSGS=1000000
  LOAD=(--concurrency 64)
else
  MSGS=$(awk -v r="$RATE" -v s="$SECS" 'BEGIN { printf "%d", r * s }')
  LOAD=(--rate "$RATE")
fi
"$BIN/loadgen" direct --http "127.0.0.1:$((PORT + 10))" --grpc "127.0.0.1:$((PORT + 21))" \
  --server-pid "${NODES[0]}" --users "$USERS" "${LOAD[@]}" --messages "$MSGS" \
  --duration "$SECS" --payload-bytes 100 --grpc-conns 4 >"$WORK/lg.out" 2>&1 &
LG=$!
# The sends start once every user is connected: wait for the first delivery counted.
sleep 3
declare -A C0
for p in "${NODES[@]}" "$REDIS"; do C0[$p]=$(cpu "$p"); done
T0=$(date +%s.%N)
REC=()
WIN=$(awk -v s="$SECS" 'BEGIN { printf "%d", (s > 6) ? s - 4 : s / 2 }')
case "$MODE" in
perf)
  for n in node-recv:"${NODES[0]}" node-send:"${NODES[1]}" redis:"$REDIS"; do
    perf record -F 999 -g -p "${n#*:}" -o "$WORK/${n%%:*}.data" -- sleep "$WIN" >/dev/null 2>&1 &
    REC+=("$!")
  done
  ;;
stat)
  for n in node-recv:"${NODES[0]}" node-send:"${NODES[1]}" node-idle:"${NODES[2]}" redis:"$REDIS"; do
    perf stat -e raw_syscalls:sys_enter,context-switches,cpu-migrations -p "${n#*:}" \
      -o "$WORK/${n%%:*}.stat" -- sleep "$WIN" >/dev/null 2>&1 &
    REC+=("$!")
  done
  ;;
esac
for r in "${REC[@]}"; do wait "$r"; done
wait "$LG"
T1=$(date +%s.%N)
cat "$WORK/lg.out" | grep -E '^(acked|rpc_per_s|sent|lost|rpc_errors|delivered|delivery_latency_us|server_cpu)' || cat "$WORK/lg.out"
# The messages sent inside the window: the sends run at RATE from before T0 to about T1.
MSGS_SENT=$(awk '$1 == "sent_ok" { print $2 }' "$WORK/lg.out")
[ "$RATE" = c64 ] && RATE=$(awk '$1 == "rpc_per_s" { print $2 }' "$WORK/lg.out")
DELIVERED=$(awk -v r="$RATE" -v a="$T0" -v b="$T1" -v m="$MSGS" 'BEGIN { n = r * (b - a); printf "%d", n < m ? n : m }')
total=0
for n in node-recv:"${NODES[0]}" node-send:"${NODES[1]}" node-idle:"${NODES[2]}" redis:"$REDIS"; do
  p=${n#*:}
  d=$(awk -v a="${C0[$p]}" -v b="$(cpu "$p")" 'BEGIN { printf "%.3f", b - a }')
  total=$(awk -v a="$total" -v b="$d" 'BEGIN { print a + b }')
  echo "cpu_s ${n%%:*} $d per_msg_us $(awk -v d="$d" -v m="$DELIVERED" 'BEGIN { printf "%.1f", d * 1e6 / m }')"
done
echo "cpu_s total $total per_msg_us $(awk -v d="$total" -v m="$DELIVERED" 'BEGIN { printf "%.1f", d * 1e6 / m }') (messages $DELIVERED, wall $(awk -v a="$T0" -v b="$T1" 'BEGIN { printf "%.1f", b - a }') s)"
redis-cli -p "$PORT" info commandstats | tr -d '\r' | awk -F'[:=,]' -v m="$MSGS_SENT" '
  /^cmdstat_(spublish|publish):/ { printf "redis %s calls %d (%.2f per message sent), %.2f us each\n", substr($1, 9), $3, $3 / m, $7 }'
if [ "$MODE" = stat ]; then
  for n in node-recv node-send node-idle redis; do
    echo "== $n (over $WIN s, $(awk -v r="$RATE" -v w="$WIN" 'BEGIN { print r * w }') messages offered)"
    grep -E 'raw_syscalls|context-switches|cpu-migrations' "$WORK/$n.stat"
  done
fi
if [ "$MODE" = perf ]; then
  for n in node-recv node-send redis; do
    perf script -i "$WORK/$n.data" 2>/dev/null | inferno-collapse-perf >"$WORK/$n.folded"
    inferno-flamegraph --title "cross-node SendDirect at $RATE/s: $n ($TAG)" <"$WORK/$n.folded" \
      >"$OUT/flame-cross-$n-$TAG.svg"
    echo "$n: top frames (self)"
    perf report -i "$WORK/$n.data" --no-children --sort symbol 2>/dev/null | grep -v '^#' | grep -v '^$' | head -25
  done
fi
