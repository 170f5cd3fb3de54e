#!/usr/bin/env bash
# bench/rediscost.sh: instructions redis-server runs per request of session/redisstore, counted by
# callgrind (BenchmarkRedisInstructions in session/redisstore). Unlike time, the count does not move
# with the machine's load, so a change to a Lua script can be measured in one run of each side:
#
#   bench/rediscost.sh                      # the working tree
#   git stash && bench/rediscost.sh && git stash pop
#
# It starts a private redis-server under valgrind on loopback (PORT, default 16397), runs the
# benchmark against it (BENCHTIME, default 2000x; valgrind makes the server about 50 times slower),
# and stops it. Needs valgrind and redis-server (Debian: apt-get install valgrind redis-server).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
port=${PORT:-16397}
dir=$(mktemp -d)
valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" \
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" >"$dir/valgrind.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.2; done
redis-cli -p "$port" ping >/dev/null

ACTIVEKIT_CALLGRIND_REDIS=127.0.0.1:$port ACTIVEKIT_CALLGRIND_OUT=$dir/cg.out \
  go test -run='^$' -bench='^BenchmarkRedisInstructions$' -benchtime="${BENCHTIME:-2000x}" ./session/redisstore/
