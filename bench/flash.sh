#!/usr/bin/env bash
# The flash sale under browsing in BENCHMARKS.md ("Flash sale under browsing (issue 8)").
#
#   bench/flash.sh [OUT_DIR]
#
# Overrides: DATA (/work/benchdata/1k), RATE (100 sessions/s), DURATION (30s, the quiet window),
# WARMUP (10s), SHOPPERS (3000), STOCK (1000), STORE_RPS (500, the server's default), GIVE_UP
# (60s), SEED (7), ARRIVAL (waiting: buyers opened the product page during the warm-up and click
# on that connection; cold: all connect in the instant the sale opens), RAMP (0s: every first click
# in the same instant; 2s: spread evenly over two seconds).
#
# One store (seed-0) sells STOCK units of one product to SHOPPERS buyers who arrive at once,
# while an open loop of RATE sessions/s browses the other 999 stores (the default mix: pages,
# search, some carts and checkouts, 5 % merchants). `kirana bench --flash-during-browse` measures
# the other stores in a quiet window (DURATION of browsing alone) and a contended window (the
# sale, first buyer to last) of the same run, then checks the sale on the server through the
# flash store's merchant key: PASS only with exactly STOCK orders and no unit left. Buyers wait
# out 429 (the store's rate limit) and 503 (shedding) and retry, a checkout with the same
# Idempotency-Key. The flash product's stock is reset before the run by re-running `kirana seed`
# (the stores stay; only the product and the bench keys are touched). The server's rate-limit and
# shed counters (/metrics) and the kernel's listen-queue overflows and SYN retransmits
# (/proc/net/netstat) are kept from before and after. Seeds 1,000 stores into $DATA if it has
# none. The binary is built in ${CARGO_TARGET_DIR:-target}. Exits non-zero unless PASS.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/results/flash-$(date -u +%Y%m%dT%H%M%SZ)}
DATA=${DATA:-/work/benchdata/1k}
RATE=${RATE:-100}
DURATION=${DURATION:-30s}
WARMUP=${WARMUP:-10s}
SHOPPERS=${SHOPPERS:-3000}
STOCK=${STOCK:-1000}
STORE_RPS=${STORE_RPS:-500}
GIVE_UP=${GIVE_UP:-60s}
ARRIVAL=${ARRIVAL:-waiting}
RAMP=${RAMP:-0s}
SEED=${SEED:-7}
PORT=18400
mkdir -p "$OUT"
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/kirana
log() { printf '\n== %s\n' "$*" | tee -a "$OUT/log.txt"; }

log "build"
cargo build --release -p kirana 2>&1 | tail -1
{ uname -a; echo "nproc: $(nproc)"; free -g; lscpu | grep -E 'Model name|^CPU\(s\)'; echo "load before: $(uptime)"; } > "$OUT/machine.txt"
{ git rev-parse HEAD; git status --short --untracked-files=no | grep -q . && echo "(working tree has uncommitted changes)" || true; } > "$OUT/commit.txt"

if [ ! -f "$DATA/seed-manifest.json" ]; then
  log "seeding 1000 stores into $DATA"
  "$BIN" seed --data-dir "$DATA" --stores 1000 > "$OUT/seed-stores.txt" 2>&1
fi
log "resetting the flash product to $STOCK units"
"$BIN" seed --data-dir "$DATA" --stores 1000 --flash-stock "$STOCK" > "$OUT/seed.txt" 2>&1

# Thousands of buyers hold a connection each, on both sides of 127.0.0.1.
ulimit -n "$(ulimit -Hn)"
SERVER_PID=
stop() { [ -n "$SERVER_PID" ] && { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }; SERVER_PID=; }
trap stop EXIT
"$BIN" serve --data-dir "$DATA" --listen "127.0.0.1:$PORT" --store-rps "$STORE_RPS" > "$OUT/serve-flash.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do
  if curl -sf "http://127.0.0.1:$PORT/readyz" > /dev/null; then break; fi
  sleep 0.1
done
curl -sf "http://127.0.0.1:$PORT/readyz" > /dev/null || { echo "the server did not become ready" >&2; exit 1; }
protections() { curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^kirana_(rate_limited|shed)_total' || true; }
# The kernel's TCP counters (whole machine): a crowd connecting at once can overflow the server's
# accept queue, and a dropped SYN is retried by the client after a second.
tcp_counters() {
  awk '/^TcpExt:/ { if (!h) { split($0, k); h = 1 } else { split($0, v); for (i in k) if (k[i] ~ /^(ListenOverflows|ListenDrops|TCPSynRetrans|TCPTimeouts)$/) print k[i], v[i] } }' /proc/net/netstat
}
protections > "$OUT/metrics-before.txt"
tcp_counters > "$OUT/tcp-before.txt"

CMD=("$BIN" bench --data-dir "$DATA" --target "http://127.0.0.1:$PORT" --rate "$RATE" --duration "$DURATION"
  --warmup "$WARMUP" --flash-during-browse --flash-shoppers "$SHOPPERS" --flash-give-up "$GIVE_UP" --flash-arrival "$ARRIVAL" --flash-ramp "$RAMP" --seed "$SEED"
  --server-pid "$SERVER_PID" --server-data-dir "$DATA" --json "$OUT/flash.json" --quiet)
echo "${CMD[*]}" > "$OUT/command.txt"
log "bench: ${CMD[*]}"
status=0
"${CMD[@]}" > "$OUT/flash.txt" 2> "$OUT/bench-stderr.txt" || status=$?
protections > "$OUT/metrics-after.txt"
tcp_counters > "$OUT/tcp-after.txt"
echo "load after: $(uptime)" >> "$OUT/machine.txt"
stop
[ "$status" -eq 0 ] || { echo "kirana bench exited $status" >&2; cat "$OUT/bench-stderr.txt" >&2; }

log "summary"
python3 - "$OUT" <<'PY' | tee "$OUT/summary.txt" | tee -a "$OUT/log.txt"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
r = json.loads((out / "flash.json").read_text())
fb = r["flash_during_browse"]
ms = lambda us: f"{us / 1000:.2f} ms"
print(f"command: {(out / 'command.txt').read_text().strip()}")
print(f"commit: {(out / 'commit.txt').read_text().strip()}")
print(f"machine: {(out / 'machine.txt').read_text().splitlines()[1]} (server and load generator share it)")
print(f"the other stores' reads ({r['config']['stores'] - 1} stores, open loop {r['config']['rate']} sessions/s):")
for name in ("quiet", "contended"):
    w = fb[name]
    l = w["reads"]["latency_us"]
    cpu = w["server_cpu_seconds"]
    busy = f", server {cpu / w['secs']:.2f} cores busy" if cpu is not None and w["secs"] else ""
    print(f"  {name:9} {w['secs']:6.1f} s  {w['reads']['count']:7} reads  p50 {ms(l['p50'])}  p99 {ms(l['p99'])}"
          f"  p99.9 {ms(l['p999'])}  max {ms(l['max'])}  errors {w['errors']} (429 {w['limited']}, 503 {w['shed']}){busy}")
print("  p99 by type, quiet -> contended: " + ", ".join(
    f"{k} {ms(fb['quiet']['by_type'][k]['latency_us']['p99'])} -> {ms(fb['contended']['by_type'][k]['latency_us']['p99'])}"
    for k in ("home", "category", "product", "search", "order_status", "dashboard_orders", "dashboard_products")
    if fb["quiet"]["by_type"][k]["count"] and fb["contended"]["by_type"][k]["count"]))
opens = round(fb["quiet"]["secs"])
print("  reads p99 second by second from 5 s before the sale (| = it opens): " + " ".join(
    ("| " if t["second"] == opens else "") + ms(t["p99_us"]) for t in fb["timeline"] if t["second"] + 5 >= opens))
ratio = fb["p99_ratio"]
print(f"contended / quiet p99: {ratio:.2f} (goal <= {fb['p99_ratio_goal']}: {'met' if fb['p99_goal_met'] else 'NOT met'})"
      if ratio is not None else "contended / quiet p99: n/a")
v = fb["flash"]
print(f"flash: {v['shoppers']} buyers, {v['stock_at_start']} units: {v['orders']} orders, {v['sold_out']} sold out, "
      f"{v['errors']} errors ({v['gave_up']} gave up); 429 x{v['answers_429']}, 503 x{v['answers_503']}, "
      f"{v['retries']} retries ({v['checkout_retries']} checkouts); {v['secs']:.1f} s first buyer to last")
print(f"server: {v['server_orders']} orders ({v['server_units']} units) for the flash product, "
      f"{v['server_stock_left']} left; oversold: {'YES' if v['oversold'] else 'no'}")
print(f"verdict: {v['verdict']}" + (f" ({'; '.join(v['reasons'])})" if v["reasons"] else ""))
PY
echo "server counters before/after:" | tee -a "$OUT/summary.txt"
paste "$OUT/metrics-before.txt" "$OUT/metrics-after.txt" | tee -a "$OUT/summary.txt" || true
echo "TCP during the run (this machine, every process): $(join "$OUT/tcp-before.txt" "$OUT/tcp-after.txt" | awk '{ printf "%s +%d  ", $1, $3 - $2 }')" \
  | tee -a "$OUT/summary.txt"
python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["flash_during_browse"]["flash"]["verdict"] == "PASS" else 1)' "$OUT/flash.json"
exit "$status"
