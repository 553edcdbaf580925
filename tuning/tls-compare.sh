#!/bin/bash
# Puts over TLS: one ringd and one etcd, each alone on the client port over https with the
# same certificates (made here with openssl: a CA and a server certificate for 127.0.0.1),
# then ringd over plain http, each driven by `ringbench --cacert` with two rows of
# tuning/scenarios/etcd-doc.toml's put (1 client on 1 connection; 100 clients on 100
# connections), at TOTAL_1 and TOTAL_100 requests. Prints one line per server and row.
#
#   bash tuning/tls-compare.sh
#
# Env: RINGD, RINGBENCH (default target/release/...), ETCD (default etcd), TOTAL_1 (5000),
# TOTAL_100 (50000). Every server runs on a fresh data dir in a new directory under target/,
# removed at the end, and is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
RINGD=${RINGD:-target/release/ringd}
RINGBENCH=${RINGBENCH:-target/release/ringbench}
ETCD=${ETCD:-etcd}
TOTAL_1=${TOTAL_1:-5000}
TOTAL_100=${TOTAL_100:-50000}
WORK=$(mktemp -d "$PWD/target/tls-compare.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

cd "$WORK"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj "/CN=tls-compare CA" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=127.0.0.1" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 \
  -extfile server.ext 2>/dev/null
cd - >/dev/null

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on $1" >&2
  exit 1
}

bench() { # name endpoint ringbench-tls-args...
  local name=$1 endpoint=$2
  shift 2
  for row in "--conns=1 --clients=1:$TOTAL_1" "--conns=100 --clients=100:$TOTAL_100"; do
    local flags=${row%%:*} total=${row##*:}
    # shellcheck disable=SC2086
    local rate
    rate=$("$RINGBENCH" --endpoints "$endpoint" "$@" $flags put --key-size=8 --sequential-keys \
      --total="$total" --val-size=256 2>/dev/null | awk '/Requests\/sec/ {print $2}')
    [ -n "$rate" ] || { echo "ringbench against $name failed" >&2; exit 1; }
    echo "$name | $flags | $rate req/s"
  done
}

stop_last() {
  local pid=${PIDS[-1]}
  kill "$pid"; wait "$pid" 2>/dev/null || true
  unset 'PIDS[-1]'
}

P=$(port); Q=$(port)
"$ETCD" --data-dir "$WORK/etcd" --listen-client-urls "https://127.0.0.1:$P" \
  --advertise-client-urls "https://127.0.0.1:$P" --listen-peer-urls "http://127.0.0.1:$Q" \
  --initial-advertise-peer-urls "http://127.0.0.1:$Q" --initial-cluster "default=http://127.0.0.1:$Q" \
  --cert-file "$WORK/server.pem" --key-file "$WORK/server.key" >"$WORK/etcd.log" 2>&1 &
PIDS+=($!); wait_port "$P"; sleep 1
bench etcd-https "https://127.0.0.1:$P" --cacert "$WORK/ca.pem"
stop_last

P=$(port)
"$RINGD" --data-dir "$WORK/ringd-https" --listen-client-urls "https://127.0.0.1:$P" \
  --advertise-client-urls "https://127.0.0.1:$P" --cert-file "$WORK/server.pem" \
  --key-file "$WORK/server.key" >"$WORK/ringd-https.log" 2>&1 &
PIDS+=($!); wait_port "$P"
bench ringd-https "https://127.0.0.1:$P" --cacert "$WORK/ca.pem"
stop_last

P=$(port)
"$RINGD" --data-dir "$WORK/ringd-http" --listen-client-urls "http://127.0.0.1:$P" \
  --advertise-client-urls "http://127.0.0.1:$P" >"$WORK/ringd-http.log" 2>&1 &
PIDS+=($!); wait_port "$P"
bench ringd-http "http://127.0.0.1:$P"
stop_last
