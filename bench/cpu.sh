#!/usr/bin/env bash
# bench/cpu.sh: CPU time per request of BenchmarkSessions' contestants, client and Redis apart.
#
# The benchmark is CPU-bound on a small machine (client and Redis share the cores), and its
# requests/s move with whatever else runs there; CPU time per request moves much less. This
# starts a private redis-server on loopback (so other tests' traffic does not count), runs each
# sub-benchmark for a fixed number of requests, and prints per request: the benchmark process's
# CPU time (user + sys; the seeding of 32 sessions is included and negligible), the server's
# (INFO cpu), and the server's commands (INFO commandstats). The server is stopped (by its PID)
# and its directory removed at the end.
#
#   cd bench && ./cpu.sh                     # reads: activekit and bare, 100000 requests each
#   OPS="read write" LIBS="activekit scs gorilla bare" N=50000 ./cpu.sh
#   BIN=/tmp/old.test ./cpu.sh               # a test binary built elsewhere (go test -c)
#
# Environment: PORT (default 16398), N (requests per contestant), OPS, LIBS, BIN.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
port=${PORT:-16398}
n=${N:-100000}
ops=${OPS:-read}
libs=${LIBS:-activekit bare}

dir=$(mktemp -d)
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" >"$dir/redis.log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
cli() { redis-cli -p "$port" "$@"; }
for _ in $(seq 50); do cli ping >/dev/null 2>&1 && break; sleep 0.1; done
cli ping >/dev/null

bin=${BIN:-}
if [[ -z $bin ]]; then
  bin=$dir/bench.test
  go test -c -o "$bin" .
fi

servercpu() { cli info cpu | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/ { s += $2 } END { printf "%.6f", s }'; }
TIMEFORMAT='%3U %3S'

for op in $ops; do
  for lib in $libs; do
    cli config resetstat >/dev/null
    s0=$(servercpu)
    # -benchtime=Nx runs one request first, then N: N+1 in all. bash's time
    # writes the process's user and sys seconds.
    { time ACTIVEKIT_REDIS_ADDR=127.0.0.1:$port "$bin" -test.run='^$' \
      -test.bench="^BenchmarkSessions\$/^op=$op\$/^lib=$lib\$" -test.benchtime="${n}x" -test.benchmem >"$dir/out" 2>&1 ||
      { cat "$dir/out"; exit 1; }; } 2>"$dir/time"
    s1=$(servercpu)
    grep -E '^Benchmark' "$dir/out" || true
    read -r cu cs <"$dir/time"
    awk -v cu="$cu" -v cs="$cs" -v s0="$s0" -v s1="$s1" -v r=$((n + 1)) -v op="$op" -v lib="$lib" 'BEGIN {
      c = (cu + cs) * 1e6 / r; s = (s1 - s0) * 1e6 / r
      printf "%s %s: CPU per request %.1f µs = client %.1f + Redis %.1f\n", op, lib, c + s, c, s }'
    cli info commandstats | tr -d '\r' | awk -F'[:=,]' -v r=$((n + 1)) '
      /^cmdstat_/ && $3 / r >= 0.01 { sub("cmdstat_", "", $1); printf "  %-12s %5.2f calls/request, %5.2f µs/call\n", $1, $3 / r, $7 }'
  done
done
