#!/bin/bash
# `ringbench compare` with both servers' data dirs on a RAM block device (zram), so that
# a WAL write and its flush cost a memory copy instead of a disk's write and cache flush:
# the servers' own software with the device taken out (a power-loss-protected SSD, whose
# flush is cheap, comes closest). Nothing written there survives a reboot: use it to
# measure, never to keep data.
#
#   bash tuning/ram-disk-compare.sh tuning/scenarios/etcd-doc.toml [more scenario files]
#
# Env: RUNS (runs per scenario and server, the table shows the median; default 3), SCALE
# (ringbench's --scale, each scenario's request count times it; default 1), SIZE (the
# device's size; default 8G: three etcd members filled 2G in etcd-doc-3.toml), RINGBENCH
# (default target/release/ringbench).
# Needs root, the zram module (`modprobe zram`) with a free device, mkfs.ext4 and etcd.
# The device is made, formatted (ext4), mounted on a new directory, and reset at the end.
set -euo pipefail

[ "$#" -ge 1 ] || { echo "usage: $0 SCENARIO.toml [SCENARIO.toml ...]" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "$0: needs root (it makes and mounts a zram device)" >&2; exit 2; }
RUNS=${RUNS:-3}
SCALE=${SCALE:-1}
SIZE=${SIZE:-8G}
RINGBENCH=${RINGBENCH:-$(dirname "$0")/../target/release/ringbench}
[ -x "$RINGBENCH" ] || { echo "$0: no ringbench at $RINGBENCH (cargo build --release)" >&2; exit 2; }

[ -e /sys/class/zram-control ] || modprobe zram 2>/dev/null || true
device=$(zramctl --find --size "$SIZE") || {
    echo "$0: no free zram device (zramctl --find failed; is the zram module loaded?)" >&2
    exit 1
}
mountpoint=$(mktemp -d /tmp/ringd-ram-disk.XXXXXX)
cleanup() {
    umount "$mountpoint" 2>/dev/null || true
    rmdir "$mountpoint" 2>/dev/null || true
    zramctl --reset "$device" 2>/dev/null || true
}
trap cleanup EXIT
mkfs.ext4 -q "$device"
mount "$device" "$mountpoint"
echo "data dirs on $device ($SIZE, ext4, RAM) mounted at $mountpoint"

for scenario in "$@"; do
    "$RINGBENCH" compare --data-root "$mountpoint" --scenario "$scenario" --runs "$RUNS" --scale "$SCALE"
done
