#!/usr/bin/env bash
# What a lease keepalive costs ringd's CPU with many live leases, and what a live lease costs
# its memory. Starts a ringd (or etcd) of its own (fresh data dir, ports 23990/23991), then runs
# `ringbench lease-keepalive --leases N` twice, with TOTAL and 2*TOTAL keepalives at RATE
# per second (each lease renewed every N/RATE seconds, one stream per client):
#   CPU per keepalive = (ringd CPU of run 2 - ringd CPU of run 1) / TOTAL
#     (the grants and revokes of the N leases cost the same in both runs and cancel out);
#   memory per lease  = (largest RssAnon of ringd during run 1 - RssAnon before) / N
#     (anonymous memory: the lessor, the streams' buffers; an upper bound per lease).
# Usage: bash tuning/lease-keepalive-cost.sh   (after cargo build --release)
# Env: LEASES (100000), RATE (100000), TOTAL (300000), CLIENTS (100), CONNS (10);
# SERVER=etcd measures a real etcd (Debian's etcd-server) the same way instead of ringd.
set -euo pipefail
cd "$(dirname "$0")/.."
LEASES=${LEASES:-100000}
RATE=${RATE:-100000}
TOTAL=${TOTAL:-300000}
CLIENTS=${CLIENTS:-100}
CONNS=${CONNS:-10}
ENDPOINT=127.0.0.1:23990

SERVER=${SERVER:-ringd}
case "$SERVER" in
  ringd) binary=target/release/ringd ;;
  etcd) binary=etcd ;;
  *) echo "SERVER must be ringd or etcd" >&2; exit 2 ;;
esac

data=$(mktemp -d)
"$binary" --data-dir "$data/$SERVER" --listen-client-urls "http://$ENDPOINT" \
  --advertise-client-urls "http://$ENDPOINT" --listen-peer-urls http://127.0.0.1:23991 >"$data/$SERVER.log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT
for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/23990) 2>/dev/null && break
  sleep 0.1
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
rss_anon_kb() { awk '/^RssAnon:/ {print $2}' "/proc/$pid/status"; }
run() {
  target/release/ringbench --endpoints "$ENDPOINT" --clients "$CLIENTS" --conns "$CONNS" --rate "$RATE" \
    lease-keepalive --leases "$LEASES" --total "$1" 2>/dev/null | grep -E "Requests/sec|50% in|99% in|Error"
}

rss_before=$(rss_anon_kb)
: >"$data/rss"
( while kill -0 "$pid" 2>/dev/null && [ ! -e "$data/stop" ]; do rss_anon_kb >>"$data/rss"; sleep 0.1; done ) &
sampler=$!
cpu_0=$(cpu_ticks)
echo "run 1: $LEASES leases, $TOTAL keepalives"
run "$TOTAL"
cpu_1=$(cpu_ticks)
touch "$data/stop"
wait "$sampler"
echo "run 2: $LEASES leases, $((2 * TOTAL)) keepalives"
run "$((2 * TOTAL))"
cpu_2=$(cpu_ticks)
rss_max=$(sort -n "$data/rss" | tail -1)
hz=$(getconf CLK_TCK)
awk -v server="$SERVER" -v a="$cpu_0" -v b="$cpu_1" -v c="$cpu_2" -v hz="$hz" -v total="$TOTAL" -v leases="$LEASES" \
  -v before="$rss_before" -v max="$rss_max" 'BEGIN {
  printf "%s CPU: run 1 %.2f s, run 2 %.2f s\n", server, (b - a) / hz, (c - b) / hz
  printf "CPU per keepalive: %.2f us\n", ((c - b) - (b - a)) / hz / total * 1e6
  printf "memory per lease: %.0f bytes (RssAnon %d kB before, %d kB at most)\n", (max - before) * 1024 / leases, before, max
}'
