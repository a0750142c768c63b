# The cluster-peer section of scripts/bench (issue 23), sourced by it: three gateway nodes
# against the socket.io + Redis adapter cluster of bench/peers/socketio-cluster, each stack
# on its own redis-server (same flags), 3,000 tabs (one per user, spread evenly over the
# three nodes, WebSocket, `presence=none`: the peer has no presence), held by one
# `loadgen tabs` process that counts every message; the backend is another process:
#   gateway  `loadgen backend` (SendDirect over h2, spread over the three gRPC ports), the
#            same with `--stream` (the items of one SendStream per connection), and
#            bench/peers/socketio-cluster/grpc-backend.js (grpc-js), each at 1,000 msg/s
#            and at saturation (64 calls in flight; 384 stream items)
#   peer     bench/peers/socketio-cluster/emitter.js (@socket.io/redis-emitter,
#            io.to(userId).emit), at 1,000 msg/s and at saturation (256 publishes in
#            flight)
# Each round starts fresh Redis servers, nodes and peer processes and measures both stacks,
# the order alternating between rounds. Result lines: server cp-gateway / cp-socketio,
# scenarios PREFIX-connect (connect time, RSS of each idle node, RSS per tab), PREFIX-rate,
# PREFIX-sat, PREFIX-rate-stream, PREFIX-sat-stream, PREFIX-rate-grpcjs, PREFIX-sat-grpcjs
# (counts, p50/p99 from the message's epoch `t`, CPU per delivered message of the servers and of Redis apart, messages per
# second end to end), PREFIX (the tabs' end), and server cp-run PREFIX-order (the order of
# the stacks), PREFIX being cp for the first round, cp2 for the second. Rendered by
# `loadgen report` (loadgen/src/report/cluster_peer.rs).
#
# Knobs: BENCH_CP_FIRST=gateway|peer (which stack goes first in the first round; default
# gateway), BENCH_CP_ROUNDS (default 2, 1 with BENCH_QUICK),
# BENCH_CP_TABS (default 3000, 300 with BENCH_QUICK), BENCH_CP_SECONDS (seconds per send
# phase, default 10, 3 with BENCH_QUICK), BENCH_CP_RATE (default 1000).
# Uses from scripts/bench: log, next_port, start_nodes/stop_nodes (on REDIS_PORT), NOTES,
# RESULTS, WORK, LG, GW, QUICK.

CP_DIR="$ROOT/bench/peers/socketio-cluster"
CP_REDIS_PIDS=() CP_PEER_PIDS=()

# cp_redis: a fresh redis-server on a free port, the flags of the cluster section's;
# sets CP_REDIS_PORT and CP_REDIS_PID.
cp_redis() {
  next_port
  CP_REDIS_PORT=$FREE_PORT
  redis-server --port "$CP_REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" \
    >"$WORK/cp-redis-$CP_REDIS_PORT.log" 2>&1 &
  CP_REDIS_PID=$!
  CP_REDIS_PIDS+=("$CP_REDIS_PID")
  for _ in $(seq 100); do
    [ "$(redis-cli -p "$CP_REDIS_PORT" ping 2>/dev/null)" = PONG ] && return 0
    sleep 0.1
  done
  log "cluster-peer: redis-server did not start on $CP_REDIS_PORT"
  return 1
}

# cp_peers URL: three socket.io processes on the Redis at URL; sets CP_PEER_HTTP.
cp_peers() {
  local i
  CP_PEER_HTTP=()
  for i in 1 2 3; do
    next_port
    CP_PEER_HTTP+=("$FREE_PORT")
    (cd "$CP_DIR" && REDIS_URL="$1" exec node server.js "$FREE_PORT") >"$WORK/cp-peer-$i.log" 2>&1 &
    CP_PEER_PIDS+=("$!")
  done
  for i in 0 1 2; do
    for _ in $(seq 100); do
      (exec 3<>"/dev/tcp/127.0.0.1/${CP_PEER_HTTP[$i]}") 2>/dev/null && break
      sleep 0.1
    done
  done
}

cp_stop() {
  local pid
  for pid in ${CP_PEER_PIDS[@]+"${CP_PEER_PIDS[@]}"} ${CP_REDIS_PIDS[@]+"${CP_REDIS_PIDS[@]}"}; do
    kill -TERM "$pid" 2>/dev/null
  done
  for pid in ${CP_PEER_PIDS[@]+"${CP_PEER_PIDS[@]}"} ${CP_REDIS_PIDS[@]+"${CP_REDIS_PIDS[@]}"}; do
    wait "$pid" 2>/dev/null
  done
  CP_PEER_PIDS=() CP_REDIS_PIDS=()
}

# cp_wait FILE SECONDS: until FILE exists.
cp_wait() {
  local deadline=$((SECONDS + $2))
  while [ ! -e "$1" ]; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.05
  done
}

# cp_phase CTL PHASE SENDER...: one send phase of the tabs process watching CTL: start it,
# run the sender (bounded), hand its JSON line over, wait for the tabs' figures.
cp_phase() {
  local ctl="$1" phase="$2" line
  shift 2
  touch "$ctl/$phase.go"
  if ! cp_wait "$ctl/$phase.ready" 30; then
    NOTES+=("cluster-peer $phase: the tabs never started the phase")
    return 1
  fi
  log "cluster-peer $phase: $*"
  line="$(timeout $((CP_SECONDS + 40)) "$@" 2>>"$ctl/$phase.err" | tail -1)"
  case "$line" in
    "{"*) ;;
    *)
      NOTES+=("cluster-peer $phase: the sender failed ($(tail -1 "$ctl/$phase.err"))")
      line='{}'
      ;;
  esac
  printf '%s\n' "$line" >"$ctl/$phase.tmp" && mv "$ctl/$phase.tmp" "$ctl/$phase.sent"
  cp_wait "$ctl/$phase.done" $((CP_SECONDS + 60)) || NOTES+=("cluster-peer $phase: no figures from the tabs")
}

# cp_stack gateway|peer PREFIX: the tabs on that stack's three nodes, then its send phases.
cp_stack() {
  local stack="$1" prefix="$2" ctl="$WORK/$2-$1" server http more pids redis phases tabs_pid
  mkdir -p "$ctl"
  if [ "$stack" = gateway ]; then
    server=cp-gateway http=("${NODE_HTTP[@]}") pids="$(IFS=,; echo "${NODE_PIDS[*]}")"
    redis=$CP_GW_REDIS_PID phases=rate,sat,rate-stream,sat-stream,rate-grpcjs,sat-grpcjs
  else
    server=cp-socketio http=("${CP_PEER_HTTP[@]}") pids="$(IFS=,; echo "${CP_PEER_PIDS[*]}")"
    redis=$CP_PEER_REDIS_PID phases=rate,sat
  fi
  more="127.0.0.1:${http[1]},127.0.0.1:${http[2]}"
  log "cluster-peer $stack: $CP_TABS tabs over three nodes"
  "$LG" tabs --http "127.0.0.1:${http[0]}" --http-more "$more" --grpc "127.0.0.1:${http[0]}" \
    --users "$CP_TABS" --presence-mode none --connect-timeout 60 --hold 2 \
    --server-pids "$pids" --redis-pid "$redis" --control "$ctl" --phases "$phases" \
    --phase-timeout $((CP_SECONDS + 60)) --drain-timeout 15 \
    --server "$server" --scenario "$prefix" --json-out "$RESULTS" --quiet >"$ctl/tabs.out" 2>&1 &
  tabs_pid=$!
  if ! cp_wait "$ctl/connected" 90; then
    NOTES+=("cluster-peer $stack: the tabs did not connect")
    kill -KILL "$tabs_pid" 2>/dev/null
    wait "$tabs_pid" 2>/dev/null
    return 1
  fi
  grep -E '^(acked|connect_s|rss_per_tab_kib|idle_node_rss_mib_mean) ' "$ctl/tabs.out" | sed 's/^/    /' >&2
  local common=(--users "$CP_TABS" --duration "$CP_SECONDS")
  local envs=(USERS="$CP_TABS" DURATION="$CP_SECONDS" PAYLOAD=100)
  if [ "$stack" = gateway ]; then
    local grpc
    grpc="$(printf '127.0.0.1:%s,' "${NODE_GRPC[@]}")"
    grpc="${grpc%,}"
    cp_phase "$ctl" rate "$LG" backend --grpc "$grpc" "${common[@]}" --rate "$CP_RATE"
    cp_phase "$ctl" sat "$LG" backend --grpc "$grpc" "${common[@]}" --concurrency 64
    # One SendStream per connection (six), 64 items in flight on each at saturation.
    cp_phase "$ctl" rate-stream "$LG" backend --stream --grpc "$grpc" "${common[@]}" --rate "$CP_RATE"
    cp_phase "$ctl" sat-stream "$LG" backend --stream --grpc "$grpc" "${common[@]}" --concurrency 384
    cp_phase "$ctl" rate-grpcjs env "${envs[@]}" GRPC_ADDRS="$grpc" RATE="$CP_RATE" IN_FLIGHT=64 \
      node "$CP_DIR/grpc-backend.js"
    cp_phase "$ctl" sat-grpcjs env "${envs[@]}" GRPC_ADDRS="$grpc" RATE=0 IN_FLIGHT=64 \
      node "$CP_DIR/grpc-backend.js"
  else
    local url="redis://127.0.0.1:$CP_PEER_REDIS_PORT"
    cp_phase "$ctl" rate env "${envs[@]}" REDIS_URL="$url" RATE="$CP_RATE" IN_FLIGHT=256 \
      node "$CP_DIR/emitter.js"
    cp_phase "$ctl" sat env "${envs[@]}" REDIS_URL="$url" RATE=0 IN_FLIGHT=256 \
      node "$CP_DIR/emitter.js"
  fi
  for _ in $(seq 100); do kill -0 "$tabs_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$tabs_pid" 2>/dev/null
  wait "$tabs_pid" 2>/dev/null
  grep -E '^\{' "$ctl/tabs.out" | grep -v '"kind":"tabs-connect"' |
    sed -n 's/.*"scenario":"\([^"]*\)".*/\1/p' | tr '\n' ' ' | sed 's/^/    phases: /' >&2
  echo >&2
}

run_cluster_peer() {
  local what
  for what in redis-server redis-cli node npm; do
    if ! command -v "$what" >/dev/null; then
      log "$what not found: the cluster-peer section is skipped"
      NOTES+=("Cluster-peer section not run: $what not found")
      return 0
    fi
  done
  if ! "$GW" --help 2>/dev/null | grep -q -- '--redis-url'; then
    NOTES+=("Cluster-peer section not run: the gateway has no --redis-url")
    return 0
  fi
  # npm ci (re)writes node_modules/.package-lock.json: newer than the lock file once done.
  if [ ! "$CP_DIR/node_modules/.package-lock.json" -nt "$CP_DIR/package-lock.json" ]; then
    log "cluster-peer: npm ci in $CP_DIR"
    if ! (cd "$CP_DIR" && npm ci --no-audit --no-fund --loglevel=error >"$WORK/cp-npm.log" 2>&1); then
      tail -5 "$WORK/cp-npm.log" >&2
      NOTES+=("Cluster-peer section not run: npm ci failed")
      return 0
    fi
  fi
  if [ "$QUICK" = 1 ]; then
    CP_TABS="${BENCH_CP_TABS:-300}" CP_SECONDS="${BENCH_CP_SECONDS:-3}" CP_ROUNDS="${BENCH_CP_ROUNDS:-1}"
  else
    CP_TABS="${BENCH_CP_TABS:-3000}" CP_SECONDS="${BENCH_CP_SECONDS:-10}" CP_ROUNDS="${BENCH_CP_ROUNDS:-2}"
  fi
  CP_RATE="${BENCH_CP_RATE:-1000}"
  local first="${BENCH_CP_FIRST:-gateway}" orders round
  [ "$first" = peer ] && orders=("peer gateway" "gateway peer") || orders=("gateway peer" "peer gateway")
  trap 'cp_stop; cleanup' EXIT
  for round in $(seq "$CP_ROUNDS"); do
    cp_round "$([ "$round" = 1 ] && echo cp || echo "cp$round")" "${orders[$(((round - 1) % 2))]}" || return 0
  done
}

# cp_round PREFIX ORDER: fresh Redis servers, gateway nodes and peer processes, then each
# stack of ORDER ("gateway peer" or "peer gateway") in turn; result scenarios PREFIX-*.
cp_round() {
  local prefix="$1" order="$2" stack
  cp_redis || return 1
  CP_GW_REDIS_PID=$CP_REDIS_PID CP_GW_REDIS_PORT=$CP_REDIS_PORT
  cp_redis || return 1
  CP_PEER_REDIS_PID=$CP_REDIS_PID CP_PEER_REDIS_PORT=$CP_REDIS_PORT
  local saved_port="$REDIS_PORT"
  REDIS_PORT=$CP_GW_REDIS_PORT
  start_nodes 3
  REDIS_PORT="$saved_port"
  cp_peers "redis://127.0.0.1:$CP_PEER_REDIS_PORT"
  # Both stacks idle before any tab: the RSS of an idle node is sampled by each stack's
  # tabs process just before it connects.
  sleep 2
  note_load "cluster-peer $prefix"
  printf '{"server":"cp-run","scenario":"%s-order","order":"%s","tabs":%s,"seconds":%s,"rate":%s,"node":"%s"}\n' \
    "$prefix" "$order" "$CP_TABS" "$CP_SECONDS" "$CP_RATE" "$(node --version)" >>"$RESULTS"
  for stack in $order; do cp_stack "$stack" "$prefix"; done
  stop_nodes
  cp_stop
  cp_buffer_closes "$prefix" gateway "$CP_GW_REDIS_PORT"
  cp_buffer_closes "$prefix" peer "$CP_PEER_REDIS_PORT"
}

# cp_buffer_closes PREFIX STACK PORT: a note when that Redis closed clients over their output
# buffer limit (a subscriber that reads too slowly loses what its buffer held).
cp_buffer_closes() {
  local n
  n=$(grep -c 'overcoming of output buffer limits' "$WORK/cp-redis-$3.log" 2>/dev/null)
  [ "${n:-0}" -gt 0 ] && NOTES+=("cluster-peer $1: the $2's Redis closed $n client(s) over their output buffer limit (client-output-buffer-limit pubsub 32mb 8mb 60, the default): what their buffers held never reached a server")
  return 0
}
