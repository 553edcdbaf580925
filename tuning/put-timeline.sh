#!/usr/bin/env bash
# Where one client's put spends its time, phase by phase, on the raft core's thread and on
# the wire: a timeline from kernel tracepoints and uprobes, no instrumented build.
#
# Starts a ringd of its own (fresh data dir, ports 23980/23981, the embedded defaults), puts
# WARMUP keys, then records `ringbench --conns=1 --clients=1 put` (TOTAL puts, 8-byte keys,
# 256-byte values, as the 1-client row of tuning/scenarios/etcd-doc.toml) with `perf record`
# attached to ringd: io_uring submissions and completions (the WAL's direct write), the
# sendto/recvfrom of the client connection, the store's pwritev, and uprobes on four of
# ringd's functions (RaftCore::handle, Turn::apply_entry, Store::finish_commit,
# grpc::send_reply). Each put's
# cycle runs from one WAL write's completion to the next; the table gives every phase's p50,
# p90, p99 and mean over the cycles that passed through all of them.
#
# The probes and tracepoints add a few µs per put (compare the req/s printed here with an
# untraced run of the same ringbench command); read the phases against each other.
#
# Usage: bash tuning/put-timeline.sh   (after cargo build --release; needs root, for
#        `perf probe`, perf from Debian's linux-perf, and python3)
# Env: TOTAL (3000), WARMUP (2000), RINGD (target/release/ringd), RINGBENCH
#      (target/release/ringbench), RINGD_ARGS (extra ringd flags, e.g. "--idle-poll-us 0"),
#      KEEP=1 keeps the recording (perf.data, perf.txt) and prints where; TMPDIR places the
#      data dir (on a RAM disk, e.g. a zram device mounted there, the WAL's write completes
#      as it is submitted, and the cycle is read in that order).
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL=${TOTAL:-3000}
WARMUP=${WARMUP:-2000}
RINGD=${RINGD:-target/release/ringd}
RINGBENCH=${RINGBENCH:-target/release/ringbench}
ENDPOINT=127.0.0.1:23980
PEER=http://127.0.0.1:23981

for tool in perf python3 nm; do
  command -v "$tool" >/dev/null || { echo "put-timeline: $tool is missing (Debian: linux-perf, python3, binutils)" >&2; exit 2; }
done
for binary in "$RINGD" "$RINGBENCH"; do
  [ -x "$binary" ] || { echo "put-timeline: $binary is missing; run cargo build --release first" >&2; exit 2; }
done
RINGD=$(realpath "$RINGD")

# Names for timeline-probes.sh: this run's uprobes, which cleanup removes by pattern.
SCRIPT=put-timeline
PROBE_PREFIX="put_timeline_$$"
data=$(mktemp -d)
pid=
probes=()
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  perf probe -q -d "*:${PROBE_PREFIX}_*" >/dev/null 2>&1 || true
  if [ "${KEEP:-0}" = 1 ]; then echo "put-timeline: the recording is in $data"; else rm -rf "$data"; fi
}
trap cleanup EXIT

# shellcheck source=tuning/timeline-probes.sh
. tuning/timeline-probes.sh
add_probe handle '8RaftCore6handle17h[0-9a-f]+E$'
add_probe apply_entry '4Turn11apply_entry17h[0-9a-f]+E$'
add_probe finish_commit '5Store13finish_commit17h[0-9a-f]+E$'
add_probe send_reply '4grpc10send_reply17h[0-9a-f]+E$'

# shellcheck disable=SC2086
"$RINGD" --data-dir "$data/ringd" --listen-client-urls "http://$ENDPOINT" --advertise-client-urls "http://$ENDPOINT" \
  --listen-peer-urls "$PEER" --initial-advertise-peer-urls "$PEER" --initial-cluster "default=$PEER" \
  ${RINGD_ARGS:-} >"$data/ringd.log" 2>&1 &
pid=$!
up=
for _ in $(seq 1 100); do
  kill -0 "$pid" 2>/dev/null || break
  # Listening, and still alive: not another server on the port while this one exits.
  if (exec 3<>/dev/tcp/127.0.0.1/23980) 2>/dev/null && kill -0 "$pid" 2>/dev/null; then up=1; break; fi
  sleep 0.1
done
if [ -z "$up" ]; then
  echo "put-timeline: ringd did not start listening on $ENDPOINT (it exited, or 10 s passed); its log:" >&2
  cat "$data/ringd.log" >&2
  exit 1
fi
if ! "$RINGBENCH" --endpoints "$ENDPOINT" put --total "$WARMUP" --key-size 8 --val-size 256 >"$data/warmup.out" 2>&1; then
  echo "put-timeline: the warm-up puts failed:" >&2
  tail -5 "$data/warmup.out" >&2
  exit 1
fi

events=(-e io_uring:io_uring_submit_req -e io_uring:io_uring_complete -e syscalls:sys_enter_pwritev
  -e syscalls:sys_enter_sendto -e syscalls:sys_exit_recvfrom)
for probe in "${probes[@]}"; do events+=(-e "$probe"); done
if ! perf record -q -m 32M -p "$pid" "${events[@]}" -o "$data/perf.data" -- \
  "$RINGBENCH" --endpoints "$ENDPOINT" --conns 1 --clients 1 --precise \
  put --key-size 8 --sequential-keys --total "$TOTAL" --val-size 256 >"$data/ringbench.out" 2>&1; then
  echo "put-timeline: the recorded run failed:" >&2
  tail -5 "$data/ringbench.out" >&2
  exit 1
fi
grep -E "Requests/sec|50% in|99% in" "$data/ringbench.out" | tr -s '\t ' ' ' || true
perf script -i "$data/perf.data" 2>/dev/null >"$data/perf.txt"

PYTHONPATH=tuning PYTHONDONTWRITEBYTECODE=1 python3 - "$data/perf.txt" <<'EOF'
import re, statistics, sys
from collections import Counter

line_re = re.compile(r'\s*(\S+)\s+(\d+)\s+\[\d+\]\s+([\d.]+):\s+(\S+?):(\S+?):?\s(.*)')
events = []
for line in open(sys.argv[1]):
    m = line_re.match(line)
    if m:
        _, tid, t, _, name, rest = m.groups()
        events.append((int(tid), float(t) * 1e6, name, rest))


from timeline_events import percentile, received, request, wal_result


# A WAL write is a WRITE or WRITE_FIXED submission whose own completion is a WAL-sized write.
wal_submits, open_writes = set(), {}
for index, (tid, _, name, rest) in enumerate(events):
    if name == 'io_uring_submit_req' and 'opcode WRITE' in rest:
        open_writes[request(rest)] = index
    elif name == 'io_uring_complete':
        submitted = open_writes.pop(request(rest), None)
        if submitted is not None and wal_result(rest):
            wal_submits.add(submitted)
# The raft core is the thread that submits the WAL's writes.
writers = Counter(events[index][0] for index in wal_submits)
if not writers:
    sys.exit("put-timeline: no WAL write seen on any ringd thread")
core = writers.most_common(1)[0][0]


def kind(index, name, rest):
    if name == 'io_uring_submit_req':
        return 'wal_submit' if index in wal_submits else None
    if name == 'io_uring_complete':
        return 'wal_done' if wal_result(rest) else None
    if name == 'sys_enter_pwritev':
        return 'pwritev'
    if name == 'sys_enter_sendto':
        return 'sendto'
    if name == 'sys_exit_recvfrom':
        # A read that returned bytes (not EAGAIN, nor 0).
        return 'recvfrom' if received(rest) > 0 else None
    probe = re.match(r'put_timeline_\d+_(handle|apply_entry|finish_commit|send_reply)$', name)
    return probe.group(1) if probe else None


marks = [(t, k) for index, (tid, t, name, rest) in enumerate(events) if tid == core
         for k in [kind(index, name, rest)] if k]
# From the publication to the next request's WAL write submitted: the same in every order.
reply_to_submit = (
    ['finish_commit', 'send_reply', 'sendto', 'recvfrom', 'handle', 'wal_submit'],
    [
        ('finish_commit -> send_reply', 'the reply reaches its stream'),
        ('send_reply -> reply sendto', 'HTTP/2 frames written'),
        ('reply sendto -> next request read', 'ringbench, loopback TCP, ringd\'s send'),
        ('request read -> raft loop (proposal)', ''),
        ('raft loop -> WAL write submitted', ''),
    ])
# The anchors of one cycle, in order, from one WAL completion to the next; 'handle' occurs
# twice (the WAL's Persisted event, then the next request's proposal after it was read).
# A sole voter applies a put while its WAL write is in flight (`Ahead` in
# src/server/writer.rs): its page writes come before the completion, and only the
# publication (finish_commit) is left after it. Entries that did not go ahead are applied
# after their commit (`Turn::apply_entry`).
schemes = [
    ('applied ahead, during the WAL write',
     ['wal_done', 'handle'] + reply_to_submit[0] + ['pwritev', 'wal_done'],
     [('WAL write durable -> raft loop (Persisted)', ''), ('raft loop -> finish_commit (published)', '')]
     + reply_to_submit[1]
     + [('WAL write submitted -> store pwritev', 'the apply, ahead'),
        ('store pwritev -> WAL completion seen', 'the device, and the core picking it up')]),
    # On a device that completes a write as it is submitted (a RAM disk: zram, or TMPDIR on
    # one), the apply ahead runs after the WAL's completion, and the page writes come
    # before the raft loop hears of it.
    ('applied ahead, the WAL write done at once',
     ['wal_done', 'pwritev', 'handle'] + reply_to_submit[0] + ['wal_done'],
     [('WAL write durable -> store pwritev', 'the apply, ahead'), ('store pwritev -> raft loop (Persisted)', ''),
      ('raft loop -> finish_commit (published)', '')]
     + reply_to_submit[1] + [('WAL write submitted -> completion seen', 'the device')]),
    ('applied after the commit',
     ['wal_done', 'handle', 'apply_entry', 'pwritev'] + reply_to_submit[0] + ['wal_done'],
     [('WAL write durable -> raft loop (Persisted)', ''), ('raft loop -> apply starts', ''),
      ('apply -> first store pwritev', ''), ('store pwritev(s) -> finish_commit', '')]
     + reply_to_submit[1] + [('WAL write submitted -> completion seen', 'the device, and the core picking it up')]),
]


def cycle(a, b, anchors):
    """The times of `anchors` between marks a and b (both 'wal_done'), or None."""
    found, position = [], a
    for anchor in anchors[:-1]:
        while position < b and marks[position][1] != anchor:
            position += 1
        if position == b:
            return None
        found.append(marks[position][0])
        position += 1
    # Nothing of the next cycle's order in between: a cycle whose apply ran after its
    # commit has no page write between its submission and its completion.
    if anchors[-2] == 'wal_submit' and any(k == 'pwritev' for _, k in marks[position:b]):
        return None
    return found + [marks[b][0]]


durations = [[[] for _ in phases] for _, _, phases in schemes]
totals = [[] for _ in schemes]
skipped = 0
starts = [i for i, (_, k) in enumerate(marks) if k == 'wal_done']
for a, b in zip(starts, starts[1:]):
    for s, (_, anchors, phases) in enumerate(schemes):
        found = cycle(a, b, anchors)
        if found:
            totals[s].append(found[-1] - found[0])
            for i in range(len(phases)):
                durations[s][i].append(found[i + 1] - found[i])
            break
    else:
        skipped += 1
if not any(totals):
    sys.exit("put-timeline: no complete cycle found")


def row(name, values, note=''):
    ordered = sorted(values)
    p50, p90, p99 = (percentile(ordered, q) for q in (0.5, 0.9, 0.99))
    print(f"{name:44s} {p50:8.1f} {p90:8.1f} {p99:8.1f} {statistics.mean(values):8.1f}  {note}")


for (title, _, phases), phase_durations, cycle_totals in zip(schemes, durations, totals):
    if not cycle_totals:
        continue
    print(f"\n{len(cycle_totals)} put cycles on the raft core's thread, {title}")
    print(f"{'phase':44s} {'p50 µs':>8s} {'p90 µs':>8s} {'p99 µs':>8s} {'mean µs':>8s}")
    for (name, note), values in zip(phases, phase_durations):
        row(name, values, note)
    row('whole cycle (one put)', cycle_totals, 'percentiles of whole cycles, not sums of the rows')
print(f"\n{skipped} cycles without every phase of either order, left out")
EOF
