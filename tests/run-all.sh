#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs every test.
# The tests drive the real etcdctl and compare against a real etcd (Debian's etcd-client and
# etcd-server), and check /metrics with Prometheus (Debian's prometheus: prometheus and
# promtool); a test never skips because a tool is missing, so they are installed here.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
# tests/metrics.rs: promtool checks the /metrics exposition and a real Prometheus scrapes it.
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || need+=(prometheus)
# tests/tls.rs: curl over https.
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

# Release mode: the simulation and property tests run many seeds.
cargo test --release "$@"
# The benchmarks must keep compiling; `cargo bench` runs them (README, Performance).
cargo bench --no-run --quiet
