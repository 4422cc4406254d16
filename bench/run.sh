#!/usr/bin/env bash
# Reproduces every number in BENCHMARKS.md, each beside its same-run baseline.
#
#   bench/run.sh [OUT_DIR]
#
# Needs: a release build (built here), wrk and nginx (Debian: apt-get install wrk nginx-light),
# and two seeded data directories (seeded here if missing; the million-store one takes ~8 min and
# ~15 GB): $DATA_1K and $DATA_1M.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/results/$(date -u +%Y%m%dT%H%M%SZ)}
DATA_1K=${DATA_1K:-/work/benchdata/1k}
DATA_1M=${DATA_1M:-/work/benchdata/1m}
RATE=${RATE:-200}          # open-loop sessions/s for the 1k-vs-1M comparison
DURATION=${DURATION:-60s}
mkdir -p "$OUT"
BIN=$PWD/target/release/kirana
. bench/nginx.sh
log() { printf '\n== %s\n' "$*" | tee -a "$OUT/log.txt"; }

log "build"
cargo build --release -p kirana 2>&1 | tail -1
uname -a > "$OUT/machine.txt"; nproc >> "$OUT/machine.txt"; free -g >> "$OUT/machine.txt"
git rev-parse HEAD > "$OUT/commit.txt"

seed_if_missing() { # dir stores
  if [ ! -f "$1/seed-manifest.json" ]; then
    log "seeding $2 stores into $1"
    /usr/bin/time -v "$BIN" seed --data-dir "$1" --stores "$2" 2> >(tr '\r' '\n' | tail -40 > "$OUT/seed-$2.txt")
  fi
}
seed_if_missing "$DATA_1K" 1000
seed_if_missing "$DATA_1M" 1000000

SERVER_PID=
serve() { # data port
  "$BIN" serve --data-dir "$1" --listen "127.0.0.1:$2" > "$OUT/serve-$2.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$2/readyz" > /dev/null && return; sleep 0.1; done
  echo "server on $2 did not become ready" >&2; exit 1
}
stop() { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }
trap stop EXIT

# --- 1. Product page (uncached JSON) vs nginx serving the same bytes --------------------------
log "product page vs nginx (wrk -t1 -c64 -d10s, 3 runs each, interleaved)"
serve "$DATA_1M" 18100
PRODUCT=$(curl -s "http://127.0.0.1:18100/api/v1/storefront/seed-0/products?limit=1" | python3 -c 'import json,sys;print(json.load(sys.stdin)["items"][0]["id"])')
URL="http://127.0.0.1:18100/api/v1/storefront/seed-0/products/$PRODUCT"
nginx_start 18101
curl -s "$URL" > "$NGX/www/product.json"; chmod 644 "$NGX/www/product.json"
# A baseline that answers errors measures nothing: check it serves the bytes first.
cmp -s <(curl -s http://127.0.0.1:18101/product.json) "$NGX/www/product.json" || { echo "nginx does not serve product.json" >&2; exit 1; }
wc -c < "$NGX/www/product.json" > "$OUT/product-bytes.txt"
for i in 1 2 3; do
  wrk -t1 -c64 -d10s --latency "$URL" > "$OUT/wrk-kirana-$i.txt"
  wrk -t1 -c64 -d10s --latency "http://127.0.0.1:18101/product.json" > "$OUT/wrk-nginx-$i.txt"
done
nginx_stop
stop

# --- 2. Checkout orders/s vs the database's own single-row insert rate ------------------------
log "checkout throughput vs SQLite insert rate (same disk, same run)"
"$BIN" baseline --data-dir "$DATA_1K" --seconds 10 > "$OUT/baseline-before.json"
# A pure checkout burst: 3000 shoppers with a cart each check out at once (re-seeding only
# resets the flash product's stock and the bench keys).
"$BIN" seed --data-dir "$DATA_1K" --stores 1000 --flash-stock 3000 > /dev/null 2>&1
serve "$DATA_1K" 18102
"$BIN" bench --data-dir "$DATA_1K" --target http://127.0.0.1:18102 --concurrency 8 --duration 5s --warmup 2s \
  --flash-sale --flash-shoppers 3000 --server-pid "$SERVER_PID" --json "$OUT/flash.json" --quiet > "$OUT/flash.txt" 2>&1
# Buyer sessions, closed loop: home → category → product → cart → add → checkout → status.
"$BIN" bench --data-dir "$DATA_1K" --target http://127.0.0.1:18102 --concurrency 64 --duration 30s --warmup 5s \
  --cart-ratio 1 --checkout-ratio 1 --search-ratio 0 --merchant-ratio 0 --min-browse 1 --max-browse 1 --max-cart-items 1 \
  --server-pid "$SERVER_PID" --json "$OUT/buyers.json" --quiet > "$OUT/buyers.txt" 2>&1
stop
"$BIN" baseline --data-dir "$DATA_1K" --seconds 10 > "$OUT/baseline-after.json"

# --- 3. p99 at 1,000 stores vs 1,000,000 stores, same open-loop rate, alternating -------------
# The files are read once first so both sizes start with the OS page cache warm, as on a server
# that has been running: otherwise the million-store run measures the disk, not kirana.
log "open loop at $RATE sessions/s: 1k vs 1M stores, three rounds, page cache warm"
cat "$DATA_1K"/directory.db "$DATA_1K"/shards/*.db "$DATA_1M"/directory.db "$DATA_1M"/shards/*.db > /dev/null
for round in 1 2 3; do
  for size in 1k 1m; do
    data=$DATA_1K; [ "$size" = 1m ] && data=$DATA_1M
    serve "$data" 18103
    "$BIN" bench --data-dir "$data" --target http://127.0.0.1:18103 --rate "$RATE" --duration "$DURATION" --warmup 10s \
      --server-pid "$SERVER_PID" --server-data-dir "$data" --seed 7 --json "$OUT/mix-$size-$round.json" --quiet \
      > "$OUT/mix-$size-$round.txt" 2>&1
    stop
  done
done

# --- 4. Footprint ------------------------------------------------------------------------------
log "footprint"
du -sb "$DATA_1K" "$DATA_1M" > "$OUT/disk.txt"
log "done: $OUT"
