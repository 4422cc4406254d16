#!/usr/bin/env bash
# The web pages' numbers in BENCHMARKS.md, each beside a same-run baseline.
#
#   bench/web.sh [OUT_DIR]
#
# 1. The storefront's product page, as the JSON API and as HTML (uncached, as a first visit
#    gets it: no cookies), with wrk, against nginx serving the same bytes from a file. Needs wrk and nginx (Debian:
#    apt-get install wrk nginx-light); seeds 1,000 stores into $DATA if it has none.
# 2. The merchant's path in a real browser (sign in → store → product with a photo → live page),
#    three runs of the release-built browser test: server time, wall time, requests, and the
#    product page's size.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/results/web-$(date -u +%Y%m%dT%H%M%SZ)}
DATA=${DATA:-/work/benchdata/1k}
mkdir -p "$OUT"
BIN=$PWD/target/release/kirana
. bench/nginx.sh
log() { printf '\n== %s\n' "$*" | tee -a "$OUT/log.txt"; }

log "build"
cargo build --release -p kirana 2>&1 | tail -1
uname -a > "$OUT/machine.txt"; nproc >> "$OUT/machine.txt"; free -g >> "$OUT/machine.txt"
git rev-parse HEAD > "$OUT/commit.txt"

if [ ! -f "$DATA/seed-manifest.json" ]; then
  log "seeding 1000 stores into $DATA"
  "$BIN" seed --data-dir "$DATA" --stores 1000 > "$OUT/seed.txt" 2>&1
fi

SERVER_PID=
stop() { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }
trap stop EXIT
"$BIN" serve --data-dir "$DATA" --listen 127.0.0.1:18200 > "$OUT/serve.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18200/readyz > /dev/null && break; sleep 0.1; done

log "storefront product page, JSON and HTML, vs nginx serving the same bytes (wrk -t1 -c64 -d10s, 3 runs each, interleaved)"
PRODUCT=$(curl -s "http://127.0.0.1:18200/api/v1/storefront/seed-0/products?limit=1" | python3 -c 'import json,sys;print(json.load(sys.stdin)["items"][0]["id"])')
nginx_start 18201
for kind in json html; do
  if [ $kind = json ]; then URL="http://127.0.0.1:18200/api/v1/storefront/seed-0/products/$PRODUCT";
  else URL="http://127.0.0.1:18200/seed-0/product/$PRODUCT"; fi
  curl -s "$URL" > "$NGX/www/product.$kind"; chmod 644 "$NGX/www/product.$kind"
  wc -c < "$NGX/www/product.$kind" > "$OUT/product-$kind-bytes.txt"
  gzip -c "$NGX/www/product.$kind" | wc -c > "$OUT/product-$kind-gzip-bytes.txt"
  # A baseline that answers errors measures nothing: check it serves the bytes first.
  cmp -s <(curl -s "http://127.0.0.1:18201/product.$kind") "$NGX/www/product.$kind" \
    || { echo "nginx does not serve product.$kind" >&2; exit 1; }
  for i in 1 2 3; do
    wrk -t1 -c64 -d10s --latency "$URL" > "$OUT/wrk-kirana-$kind-$i.txt"
    wrk -t1 -c64 -d10s --latency "http://127.0.0.1:18201/product.$kind" > "$OUT/wrk-nginx-$kind-$i.txt"
  done
done
if grep -l "Non-2xx" "$OUT"/wrk-*.txt; then echo "some responses above were errors; the numbers are void" >&2; exit 1; fi
nginx_stop
stop

log "the merchant's path in headless Chromium (release build, 3 runs)"
for i in 1 2 3; do
  cargo test --release -q -p kirana-web --test browser -- --nocapture 2>&1 | grep -E '^BENCH|  ms  ' > "$OUT/browser-$i.txt"
done
grep -h BENCH "$OUT"/browser-*.txt | tee -a "$OUT/log.txt"
grep -H "Requests/sec" "$OUT"/wrk-*.txt | tee -a "$OUT/log.txt"
