#!/usr/bin/env bash
# The fleet under faults, longer than CI runs it (crates/kirana/tests/fleet.rs): nodes behind
# nginx, control and two shards under pg_auto_failover, NATS, Redis, and cycle after cycle of a
# store moved each way, a node kill -9ed, a shard primary kill -9ed (failover), NATS kill -9ed, a
# standby's replay paused, while shoppers buy, a merchant edits and readers browse.
#
#   bench/soak.sh [CYCLES] [NODES]     the soak: CYCLES one-minute cycles (default 20) with NODES
#                                      nodes (default 2); its report: bench/results/soak-*.json
#   bench/soak.sh throughput [SECS]    checkouts per second through nginx with 1, 2 and 3 nodes,
#                                      no faults, SECS seconds each (default 60)
#
# Needs what .ci/run installs (pg_auto_failover, nginx, NATS, Redis). Runs the release build of
# the binary, like the other bench scripts.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/results
stamp=$(date -u +%Y%m%dT%H%M%SZ)
commit=$(git rev-parse --short HEAD)

run() { # report-file, then KEY=VALUE environment
  local report=$1; shift
  env "$@" KIRANA_FLEET_REPORT="$PWD/$report" \
    cargo test --release -p kirana --test fleet -- --nocapture --test-threads 1
}

if [[ "${1:-}" == "throughput" ]]; then
  secs=${2:-60}
  for n in 1 2 3; do
    out="bench/results/throughput-$stamp-${n}nodes.json"
    echo "== throughput with $n node(s), $secs s (commit $commit)"
    run "$out" KIRANA_FLEET_MODE=throughput KIRANA_FLEET_NODES="$n" KIRANA_FLEET_SECS="$secs"
    cat "$out"
  done
  exit 0
fi

cycles=${1:-20}
nodes=${2:-2}
out="bench/results/soak-$stamp.json"
echo "== soak: $cycles cycles, $nodes nodes (commit $commit)"
run "$out" KIRANA_FLEET_CYCLES="$cycles" KIRANA_FLEET_NODES="$nodes"
echo "report: $out"
