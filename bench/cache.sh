#!/usr/bin/env bash
# The read cache's numbers in BENCHMARKS.md ("Read cache (issue 7)"), each beside a same-run
# baseline.
#
#   bench/cache.sh [OUT_DIR]          # DATA, REQUESTS, SMALL_MB override the defaults
#
# 1. The HTML product page served from the read cache, against nginx serving the same bytes from
#    a file and against the same page uncached (`X-Kirana-Consistency: strong` skips the cache);
#    then the JSON product API cached, nginx, uncached. wrk -t1 -c64 -d10s --latency, 3 runs each,
#    interleaved. The page is checked to answer `x-kirana-cache: hit` before, and the server's
#    L1 hit counter must grow by as many requests as wrk made during every cached run.
# 2. The hit ratio under Zipf popularity (s = 1) over every product page of the 1,000 seeded
#    stores (bench/zipf_pages.py), on a fresh server with the default 256 MiB cache and on one
#    with $SMALL_MB MiB; the x-kirana-cache header of every answer is counted and the server's
#    kirana_cache_* counters are kept from before and after.
# Needs wrk and nginx (Debian: apt-get install wrk nginx-light) and python3; seeds 1,000 stores
# into $DATA if it has none. The binary is built in ${CARGO_TARGET_DIR:-target}.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/results/cache-$(date -u +%Y%m%dT%H%M%SZ)}
DATA=${DATA:-/work/benchdata/1k}
REQUESTS=${REQUESTS:-200000}
SMALL_MB=${SMALL_MB:-8}
PORT=18300
NGX_PORT=18301
mkdir -p "$OUT"
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/kirana
. bench/nginx.sh
log() { printf '\n== %s\n' "$*" | tee -a "$OUT/log.txt"; }

log "build"
cargo build --release -p kirana 2>&1 | tail -1
{ uname -a; echo "nproc: $(nproc)"; free -g; lscpu | grep -E 'Model name|^CPU\(s\)'; } > "$OUT/machine.txt"
git rev-parse HEAD > "$OUT/commit.txt"

if [ ! -f "$DATA/seed-manifest.json" ]; then
  log "seeding 1000 stores into $DATA"
  "$BIN" seed --data-dir "$DATA" --stores 1000 > "$OUT/seed.txt" 2>&1
fi

SERVER_PID=
NGX=
stop() { [ -n "$SERVER_PID" ] && { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }; SERVER_PID=; }
cleanup() { stop; nginx_stop; }
trap cleanup EXIT
serve() { # name, extra args…
  local name=$1; shift
  "$BIN" serve --data-dir "$DATA" --listen "127.0.0.1:$PORT" "$@" > "$OUT/serve-$name.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    if curl -sf "http://127.0.0.1:$PORT/readyz" > /dev/null; then
      return
    fi
    sleep 0.1
  done
  echo "the server did not become ready" >&2; exit 1
}
metrics() { curl -s "http://127.0.0.1:$PORT/metrics" | grep '^kirana_cache_' || true; }
# The value of one counter line (labels included, as the exposition prints them), 0 if absent.
counter() { awk -v m="$1" '$1 == m { print $2; found = 1 } END { if (!found) print 0 }'; }
L1_HIT='kirana_cache_requests_total{level="l1",result="hit"}'
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }  # utime + stime, in clock ticks
HZ=$(getconf CLK_TCK)

# --- 1. Cached page vs nginx vs uncached -------------------------------------------------------
serve wrk
BASE="http://127.0.0.1:$PORT"
PRODUCT=$(curl -s -H 'X-Kirana-Consistency: strong' "$BASE/api/v1/storefront/seed-0/products?limit=1" \
  | python3 -c 'import json,sys;print(json.load(sys.stdin)["items"][0]["id"])')
nginx_start "$NGX_PORT"
NGX_WORKER=$(pgrep -P "$(cat "$NGX/nginx.pid")" | head -1)

# run_wrk name pid url [header]: one wrk run, with the serving process's CPU time beside it.
run_wrk() {
  local name=$1 pid=$2 url=$3 hdr=${4:-} before after
  before=$(cpu_ticks "$pid")
  if [ -n "$hdr" ]; then wrk -t1 -c64 -d10s --latency -H "$hdr" "$url" > "$OUT/$name.txt"
  else wrk -t1 -c64 -d10s --latency "$url" > "$OUT/$name.txt"; fi
  after=$(cpu_ticks "$pid")
  echo "server_cpu_seconds $(awk -v a="$before" -v b="$after" -v hz="$HZ" 'BEGIN { printf "%.2f", (b - a) / hz }')" >> "$OUT/$name.txt"
}

log "product page, cached vs nginx (same bytes) vs uncached (wrk -t1 -c64 -d10s --latency, 3 runs each, interleaved)"
for kind in html json; do
  if [ $kind = json ]; then URL="$BASE/api/v1/storefront/seed-0/products/$PRODUCT";
  else URL="$BASE/seed-0/product/$PRODUCT"; fi
  # Warm it once, then it must be a hit, and the cached bytes must be what the database gives.
  curl -s -D "$OUT/headers-$kind-warm.txt" -o /dev/null "$URL"
  curl -s -D "$OUT/headers-$kind-cached.txt" -o "$NGX/www/product.$kind" "$URL"
  curl -s -D "$OUT/headers-$kind-uncached.txt" -o "$NGX/product-uncached.$kind" -H 'X-Kirana-Consistency: strong' "$URL"
  grep -qi '^x-kirana-cache: hit' "$OUT/headers-$kind-cached.txt" \
    || { echo "the second $kind request was not a cache hit" >&2; cat "$OUT/headers-$kind-cached.txt" >&2; exit 1; }
  if grep -qi '^x-kirana-cache' "$OUT/headers-$kind-uncached.txt"; then
    echo "the strong $kind request went through the cache" >&2; exit 1
  fi
  cmp -s "$NGX/www/product.$kind" "$NGX/product-uncached.$kind" \
    && echo "same bytes cached and uncached" > "$OUT/product-$kind-same-bytes.txt" \
    || echo "DIFFERENT bytes cached and uncached" > "$OUT/product-$kind-same-bytes.txt"
  chmod 644 "$NGX/www/product.$kind"
  wc -c < "$NGX/www/product.$kind" > "$OUT/product-$kind-bytes.txt"
  # A baseline that answers errors measures nothing: check it serves the bytes first.
  cmp -s <(curl -s "http://127.0.0.1:$NGX_PORT/product.$kind") "$NGX/www/product.$kind" \
    || { echo "nginx does not serve product.$kind" >&2; exit 1; }
  for i in 1 2 3; do
    hits_before=$(metrics | counter "$L1_HIT")
    run_wrk "wrk-cached-$kind-$i" "$SERVER_PID" "$URL"
    hits_after=$(metrics | counter "$L1_HIT")
    reqs=$(awk '/requests in/ { print $1 }' "$OUT/wrk-cached-$kind-$i.txt")
    echo "l1_hits_during_run $((hits_after - hits_before)) of $reqs requests" >> "$OUT/wrk-cached-$kind-$i.txt"
    # wrk counts only completed responses; the counter may run a few (in-flight at the end) ahead.
    [ $((hits_after - hits_before)) -ge "$reqs" ] \
      || { echo "cached run $kind-$i: only $((hits_after - hits_before)) L1 hits for $reqs requests" >&2; exit 1; }
    run_wrk "wrk-nginx-$kind-$i" "$NGX_WORKER" "http://127.0.0.1:$NGX_PORT/product.$kind"
    run_wrk "wrk-uncached-$kind-$i" "$SERVER_PID" "$URL" 'X-Kirana-Consistency: strong'
  done
done
if grep -l "Non-2xx" "$OUT"/wrk-*.txt; then echo "some responses above were errors; the numbers are void" >&2; exit 1; fi
grep -H "Socket errors" "$OUT"/wrk-*.txt | tee -a "$OUT/log.txt" || true
nginx_stop
stop

# --- 2. Hit ratio under Zipf ---------------------------------------------------------------------
serve discover
log "listing every product of the 1000 stores (strong reads: the cache is not touched)"
python3 bench/zipf_pages.py discover "$BASE" 1000 "$OUT/pages.tsv" 2>&1 | tee -a "$OUT/log.txt"
stop
for mb in 256 "$SMALL_MB"; do
  log "Zipf s=1.0, $REQUESTS product pages, fresh server with --cache-mb $mb"
  serve "zipf-$mb" --cache-mb "$mb"
  metrics > "$OUT/zipf-$mb-metrics-before.txt"
  python3 bench/zipf_pages.py run "$BASE" "$OUT/pages.tsv" "$REQUESTS" > "$OUT/zipf-$mb.json"
  metrics > "$OUT/zipf-$mb-metrics-after.txt"
  stop
  cat "$OUT/zipf-$mb.json" | tee -a "$OUT/log.txt"
  python3 - "$OUT/zipf-$mb-metrics-before.txt" "$OUT/zipf-$mb-metrics-after.txt" <<'PY' | tee "$OUT/zipf-$mb-metrics-delta.txt" | tee -a "$OUT/log.txt"
import sys
def read(p):
    out = {}
    for line in open(p):
        name, _, value = line.rpartition(" ")
        out[name] = float(value)
    return out
a, b = read(sys.argv[1]), read(sys.argv[2])
for k in sorted(set(a) | set(b)):
    print(f"{k} {b.get(k, 0) - a.get(k, 0):+.0f}")
PY
done

log "summary"
python3 - "$OUT" <<'PY' | tee "$OUT/summary.txt" | tee -a "$OUT/log.txt"
import re, statistics, sys, pathlib
out = pathlib.Path(sys.argv[1])
def ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
def parse(p):
    t = p.read_text()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    p99 = ms(*re.search(r"99%\s+([\d.]+)(us|ms|s)", t).groups())
    cpu = float(re.search(r"server_cpu_seconds ([\d.]+)", t).group(1))
    reqs = int(re.search(r"(\d+) requests in", t).group(1))
    return rps, p99, reqs / cpu if cpu else float("nan")
med = {}
for kind in ("html", "json"):
    for who in ("cached", "nginx", "uncached"):
        runs = [parse(out / f"wrk-{who}-{kind}-{i}.txt") for i in (1, 2, 3)]
        rps = [r[0] for r in runs]
        med[who, kind] = statistics.median(rps)
        print(f"{kind:4} {who:8} req/s median {statistics.median(rps):9.0f} (runs {', '.join(f'{x:.0f}' for x in rps)})"
              f"  p99 median {statistics.median(r[1] for r in runs):6.2f} ms (runs {', '.join(f'{r[1]:.2f}' for r in runs)})"
              f"  req per server CPU-second {statistics.median(r[2] for r in runs):8.0f}")
    print(f"{kind:4} cached/nginx {med['cached', kind] / med['nginx', kind]:.2f}"
          f"  cached/uncached {med['cached', kind] / med['uncached', kind]:.2f}")
PY
