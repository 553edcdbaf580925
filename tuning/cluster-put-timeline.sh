#!/usr/bin/env bash
# Where one client's put spends its time on a three-member cluster, across the three ringd
# processes and the client: a timeline from kernel tracepoints and uprobes, no instrumented
# build. The three-member counterpart of tuning/put-timeline.sh.
#
# Starts three ringd members of its own on 127.0.0.1 (m0, m1, m2: fresh data dirs, client
# ports 24010-24012, peer ports 24020-24022, a new cluster with a token of this run), waits
# for a leader, moves the leadership to member LEADER with etcdctl's move-leader if asked,
# puts WARMUP keys, then records `ringbench --target-leader --conns=1 --clients=1 put` (TOTAL
# puts, 8-byte keys, 256-byte values) with `perf record -a` (the whole machine: three
# processes take part): io_uring submissions and completions (the WALs' direct writes), the
# sendto/recvfrom of the client and peer connections, sched_switch, and uprobes on three of
# ringd's functions (RaftCore::handle, Store::prepare, Store::finish_commit). Each cycle runs from one of the
# client's request sends to the next; the table gives, for every event of a role (leader,
# each follower by member name, client) and its occurrence in the cycle, the median and mean
# offset from the cycle's start, over the cycles that have it (kinds seen in more than half
# of them), ordered by median. Then the leader's time from its quorum (its WAL write done and
# the first ack after its appends) to its reply's send, per cycle; the whole cycle's
# percentiles, and each CPU's time per thread (from sched_switch), which shows who shares a
# CPU with whom.
#
# The threads are found from the data: the leader's raft core sends the appends (sendto
# longer than a value), the followers' raft cores are the other ringd threads that submit
# WAL writes, the client's thread sends the requests. The probes and tracepoints add a few
# µs per event (compare the req/s printed here with an untraced run of the same ringbench
# command); read the offsets against each other. Medians of offsets are taken one row at a
# time, so two rows close together can come out of order. A follower's finish_commit early in
# a cycle applies the previous put: the cycle's append brings it the commit index.
#
# Usage: bash tuning/cluster-put-timeline.sh   (after cargo build --release; needs root, for
#        `perf probe` and `perf record -a`, perf from Debian's linux-perf, python3, etcdctl
#        from Debian's etcd-client, and nm)
# Env: TOTAL (3000), WARMUP (2000), LEADER (0, 1 or 2: the member to lead; default: the one
#      elected), RINGD (target/release/ringd), RINGBENCH (target/release/ringbench),
#      RINGD_ARGS (extra ringd flags for all members, e.g. "--idle-poll-us 0"),
#      KEEP=1 keeps the recording (perf.data, perf.txt) and the members' logs, and prints where.
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL=${TOTAL:-3000}
WARMUP=${WARMUP:-2000}
LEADER=${LEADER:-}
RINGD=${RINGD:-target/release/ringd}
RINGBENCH=${RINGBENCH:-target/release/ringbench}
VAL_SIZE=256
CLIENT_PORTS=(24010 24011 24012)
PEER_PORTS=(24020 24021 24022)
ENDPOINTS=127.0.0.1:${CLIENT_PORTS[0]},127.0.0.1:${CLIENT_PORTS[1]},127.0.0.1:${CLIENT_PORTS[2]}
CLUSTER=m0=http://127.0.0.1:${PEER_PORTS[0]},m1=http://127.0.0.1:${PEER_PORTS[1]},m2=http://127.0.0.1:${PEER_PORTS[2]}
export ETCDCTL_API=3

[ "$(id -u)" = 0 ] || { echo "cluster-put-timeline: needs root (perf probe, perf record -a)" >&2; exit 2; }
for tool in perf python3 etcdctl nm; do
  command -v "$tool" >/dev/null || {
    echo "cluster-put-timeline: $tool is missing (Debian: linux-perf, python3, etcd-client, binutils)" >&2
    exit 2
  }
done
for binary in "$RINGD" "$RINGBENCH"; do
  [ -x "$binary" ] || { echo "cluster-put-timeline: $binary is missing; run cargo build --release first" >&2; exit 2; }
done
case "$LEADER" in
  '' | 0 | 1 | 2) ;;
  *) echo "cluster-put-timeline: LEADER must be 0, 1 or 2 (or unset)" >&2; exit 2 ;;
esac
RINGD=$(realpath "$RINGD")

# Names for timeline-probes.sh: this run's uprobes, which cleanup removes by pattern.
SCRIPT=cluster-put-timeline
PROBE_PREFIX="cluster_put_timeline_$$"
data=$(mktemp -d)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    # A member that has not exited after 5 s is killed.
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  perf probe -q -d "*:${PROBE_PREFIX}_*" >/dev/null 2>&1 || true
  if [ "${KEEP:-0}" = 1 ]; then echo "cluster-put-timeline: the recording is in $data"; else rm -rf "$data"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# shellcheck source=tuning/timeline-probes.sh
. tuning/timeline-probes.sh
probes=()
add_probe handle '8RaftCore6handle17h[0-9a-f]+E$'
add_probe finish_commit '5Store13finish_commit17h[0-9a-f]+E$'
# Store::prepare (before 783aa87: Store::prepare_commit_with), where a commit's pages are made.
add_probe prepare '5Store(7prepare|19prepare_commit_with)17h[0-9a-f]+E'

logs() {
  local i
  for i in 0 1 2; do echo "--- m$i:" >&2; tail -20 "$data/m$i.log" >&2; done
}

# ringd's listeners set SO_REUSEPORT, so a member would share a port that another ringd of
# the same user listens on (another run of this script) without an error: refuse instead.
for port in "${CLIENT_PORTS[@]}" "${PEER_PORTS[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "cluster-put-timeline: something already listens on 127.0.0.1:$port (another run?)" >&2
    exit 1
  fi
done
for i in 0 1 2; do
  client=http://127.0.0.1:${CLIENT_PORTS[$i]}
  peer=http://127.0.0.1:${PEER_PORTS[$i]}
  # shellcheck disable=SC2086
  "$RINGD" --name "m$i" --data-dir "$data/m$i" --listen-client-urls "$client" --advertise-client-urls "$client" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" --initial-cluster "$CLUSTER" \
    --initial-cluster-state new --initial-cluster-token "cluster-put-timeline-$$" \
    ${RINGD_ARGS:-} >"$data/m$i.log" 2>&1 &
  pids+=($!)
done

# Listening, and still alive: not another server on the port while this one exits.
up=
for _ in $(seq 1 100); do
  up=1
  for i in 0 1 2; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then up=; break 2; fi
    if ! (exec 3<>"/dev/tcp/127.0.0.1/${CLIENT_PORTS[$i]}") 2>/dev/null || ! kill -0 "${pids[$i]}" 2>/dev/null; then up=; fi
  done
  [ -n "$up" ] && break
  sleep 0.1
done
if [ -z "$up" ]; then
  echo "cluster-put-timeline: the members did not all start listening on $ENDPOINTS (one exited, or 10 s passed); their logs:" >&2
  logs
  exit 1
fi

# "<index of the leader or -1> <member ID of m0, m1, m2 in hex>", from etcdctl's view.
cluster_status() {
  (etcdctl --endpoints "$ENDPOINTS" --command-timeout=2s endpoint status -w json 2>/dev/null || true) |
    python3 -c '
import json, sys
endpoints = sys.argv[1].split(",")
try:
    statuses = {s["Endpoint"]: s["Status"] for s in json.load(sys.stdin)}
except ValueError:
    statuses = {}
ids = [statuses[e]["header"]["member_id"] if e in statuses else 0 for e in endpoints]
leaders = {s.get("leader", 0) for s in statuses.values()}
leader = leaders.pop() if len(statuses) == 3 and len(leaders) == 1 else None  # 0: none yet
print(ids.index(leader) if leader in ids else -1, *("%x" % i for i in ids))
' "$ENDPOINTS"
}
wait_for_leader() {
  local want=$1 status
  for _ in $(seq 1 100); do
    read -r -a status <<<"$(cluster_status)"
    if [ "${status[0]:--1}" -ge 0 ] && { [ -z "$want" ] || [ "${status[0]}" = "$want" ]; }; then
      leader=${status[0]}
      ids=("${status[@]:1}")
      return 0
    fi
    sleep 0.1
  done
  return 1
}
leader=
ids=()
if ! wait_for_leader ""; then
  echo "cluster-put-timeline: no leader that all three members agree on after 10 s; their logs:" >&2
  logs
  exit 1
fi
if [ -n "$LEADER" ] && [ "$LEADER" != "$leader" ]; then
  if ! etcdctl --endpoints "127.0.0.1:${CLIENT_PORTS[$leader]}" move-leader "${ids[$LEADER]}" >"$data/move-leader.out" 2>&1 ||
    ! wait_for_leader "$LEADER"; then
    echo "cluster-put-timeline: could not move the leadership from m$leader to m$LEADER:" >&2
    cat "$data/move-leader.out" >&2
    exit 1
  fi
fi
echo "m$leader leads (member IDs: m0 ${ids[0]}, m1 ${ids[1]}, m2 ${ids[2]}; pids ${pids[*]})"

if ! "$RINGBENCH" --endpoints "$ENDPOINTS" --target-leader put --total "$WARMUP" --key-size 8 \
  --val-size "$VAL_SIZE" >"$data/warmup.out" 2>&1; then
  echo "cluster-put-timeline: the warm-up puts failed:" >&2
  tail -5 "$data/warmup.out" >&2
  exit 1
fi

events=(-e io_uring:io_uring_submit_req -e io_uring:io_uring_complete -e syscalls:sys_enter_sendto
  -e syscalls:sys_exit_recvfrom -e sched:sched_switch)
for probe in "${probes[@]}"; do events+=(-e "$probe"); done
if ! perf record -a -m 16M "${events[@]}" -o "$data/perf.data" -- \
  "$RINGBENCH" --endpoints "$ENDPOINTS" --target-leader --conns 1 --clients 1 --precise \
  put --key-size 8 --sequential-keys --total "$TOTAL" --val-size "$VAL_SIZE" >"$data/ringbench.out" 2>&1; then
  echo "cluster-put-timeline: the recorded run failed:" >&2
  tail -5 "$data/ringbench.out" >&2
  exit 1
fi
grep -E "Requests/sec|50% in|99% in" "$data/ringbench.out" | tr -s '\t ' ' ' || true
# perf reports lost events on stderr (here in ringbench.out); a cycle that lost some is noise.
grep -iE "lost [0-9]+ |LOST" "$data/ringbench.out" | sed 's/^/cluster-put-timeline: warning: /' >&2 || true
for i in 0 1 2; do
  kill -0 "${pids[$i]}" 2>/dev/null || { echo "cluster-put-timeline: m$i exited during the run; its log:" >&2; tail -20 "$data/m$i.log" >&2; exit 1; }
done
perf script -F comm,pid,tid,cpu,time,event,trace -i "$data/perf.data" 2>/dev/null >"$data/perf.txt"

PYTHONPATH=tuning PYTHONDONTWRITEBYTECODE=1 python3 - "$data/perf.txt" "$(IFS=,; echo "${pids[*]}")" "$leader" "$VAL_SIZE" <<'EOF'
import re, statistics, sys
from collections import Counter, defaultdict

line_re = re.compile(r'\s*(.+?)\s+(-?\d+)/(-?\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+?):(\S+?):?(?:\s+(.*))?$')
switch_re = re.compile(r'prev_comm=(.*?) prev_pid=(-?\d+) .*?==> next_comm=(.*?) next_pid=(-?\d+)')
member_pids = [int(p) for p in sys.argv[2].split(',')]
member_of_pid = {pid: i for i, pid in enumerate(member_pids)}
status_leader = int(sys.argv[3])
val_size = int(sys.argv[4])

# (pid, tid, cpu, time in µs, event name, trace text, comm)
events = []
for line in open(sys.argv[1], errors='replace'):
    m = line_re.match(line)
    if m:
        comm, pid, tid, cpu, t, _, name, rest = m.groups()
        events.append((int(pid), int(tid), int(cpu), float(t) * 1e6, name, rest or '', comm.strip()))
if not events:
    sys.exit("cluster-put-timeline: perf script printed no events")


from timeline_events import percentile, received, request, wal_result


def sent(rest):
    """(fd, length) of a sendto."""
    m = re.search(r'fd: (0x[0-9a-f]+).*?len: (0x[0-9a-f]+)', rest)
    return (int(m.group(1), 16), int(m.group(2), 16)) if m else (None, 0)


# A WAL write is a WRITE or WRITE_FIXED submission of a member whose own completion is a
# WAL-sized write. The completion is counted for the submitting thread (the kernel may post
# it from another task's context).
wal_done_of = {}
open_writes = {}
for index, (pid, tid, _, _, name, rest, _) in enumerate(events):
    if name == 'io_uring_submit_req' and 'opcode WRITE' in rest and pid in member_of_pid:
        open_writes[request(rest)] = index
    elif name == 'io_uring_complete':
        submitted = open_writes.pop(request(rest), None)
        if submitted is not None and wal_result(rest):
            wal_done_of[index] = submitted
wal_submits = set(wal_done_of.values())

# The leader's raft core sends the appends: sendto longer than a value.
appenders = Counter(tid for (pid, tid, _, _, name, rest, _) in events
                    if pid in member_of_pid and name == 'sys_enter_sendto' and sent(rest)[1] > val_size)
if not appenders:
    sys.exit("cluster-put-timeline: no append (sendto longer than %d bytes) from any member" % val_size)
leader = appenders.most_common(1)[0][0]
# The followers' raft cores: the other threads that submit WAL writes, one per member.
writers = Counter(events[i][1] for i in wal_submits)
pid_of = {tid: pid for (pid, tid, *_rest) in events}
followers, follower_members = [], set()
for tid, _ in writers.most_common():
    member = member_of_pid[pid_of[tid]]
    if tid != leader and member != member_of_pid[pid_of[leader]] and member not in follower_members:
        followers.append(tid)
        follower_members.add(member)
if len(followers) != 2:
    print("cluster-put-timeline: warning: %d follower raft cores found (WAL writers: %s)" % (len(followers), dict(writers)))
# The client's thread sends the requests; the request's size is its most common sendto length,
# the reply's its most common read.
client_sends = Counter(tid for (pid, tid, _, _, name, _, comm) in events
                       if comm.startswith('ringbench') and name == 'sys_enter_sendto')
if not client_sends:
    sys.exit("cluster-put-timeline: no sendto from ringbench")
client = client_sends.most_common(1)[0][0]
request_size = Counter(sent(rest)[1] for (_, tid, _, _, name, rest, _) in events
                       if tid == client and name == 'sys_enter_sendto').most_common(1)[0][0]
reply_size = (Counter(received(rest) for (_, tid, _, _, name, rest, _) in events
                      if tid == client and name == 'sys_exit_recvfrom' and received(rest) > 0).most_common(1)
              or [(None, 0)])[0][0]
# The leader's peer connections are the ones it sends an append on per put (not the client's,
# which sees a few long sends too); its other sends are replies.
append_fds = Counter(sent(rest)[0] for (_, tid, _, _, name, rest, _) in events
                     if tid == leader and name == 'sys_enter_sendto' and sent(rest)[1] > val_size)
peer_fds = {fd for fd, count in append_fds.items() if count >= append_fds.most_common(1)[0][1] / 2}

# A peer frame is read as its 4-byte length, then its body: the body's read is the event. Any
# other read of a member is of a client connection (a request can take two reads).
peer_bodies, last_read = set(), {}
for index, (pid, tid, _, _, name, rest, _) in enumerate(events):
    if pid in member_of_pid and name == 'sys_exit_recvfrom' and received(rest) > 0:
        if last_read.get(tid) == 4:
            peer_bodies.add(index)
            last_read[tid] = None
        else:
            last_read[tid] = received(rest)

leader_member = member_of_pid[pid_of[leader]]
role = {leader: 'leader'}
for tid in followers:
    role[tid] = 'm%d' % member_of_pid[pid_of[tid]]
role[client] = 'client'


def kind(index):
    pid, tid, _, _, name, rest, _ = events[index]
    if name == 'io_uring_complete' and index in wal_done_of:
        return role.get(events[wal_done_of[index]][1]), 'WAL write done'
    who = role.get(tid)
    if who is None:
        return None, None
    if name == 'io_uring_submit_req':
        return who, ('WAL write submitted' if index in wal_submits else None)
    if name == 'cluster_put_timeline_%s_handle' % probe_run:
        return who, 'RaftCore::handle'
    if name == 'cluster_put_timeline_%s_finish_commit' % probe_run:
        return who, 'finish_commit (apply done)'
    if name == 'cluster_put_timeline_%s_prepare' % probe_run:
        return who, 'Store::prepare (applied, pages next)'
    if name == 'sys_enter_sendto':
        fd, length = sent(rest)
        if who == 'client':
            return who, ('request sent' if length == request_size else 'sendto %#x' % length)
        if who == 'leader':
            if length > val_size:
                return who, 'append sent'
            if fd in peer_fds:
                return who, 'commit sent (empty append)'
            return who, ('reply sent' if length == reply_size else 'sendto %#x to the client' % length)
        return who, 'ack sent'
    if name == 'sys_exit_recvfrom':
        length = received(rest)
        if length == 0 or (who != 'client' and length == 4 and index not in peer_bodies):
            return who, None
        if who == 'client':
            return who, ('reply read' if length == reply_size else 'read %#x' % length)
        if who == 'leader':
            return who, ('ack read' if index in peer_bodies else 'request read')
        if index not in peer_bodies:
            return who, 'read %#x' % length
        return who, ('append read' if length > val_size else 'commit read (empty append)')
    return who, None


probe_names = [e[4] for e in events if e[4].startswith('cluster_put_timeline_')]
probe_run = re.match(r'cluster_put_timeline_(\d+)_', probe_names[0]).group(1) if probe_names else '-'

# Cycles: from one request sent by the client to the next.
starts = [i for i, e in enumerate(events)
          if e[1] == client and e[4] == 'sys_enter_sendto' and sent(e[5])[1] == request_size]
offsets = defaultdict(list)
cycles = []
# Per cycle, from the leader's quorum (the later of its own WAL write done and the first
# follower's ack read after it sent the appends) to its reply's send: Raft's commit, the
# apply (or, applied ahead, the publication) and the reply.
quorum_to_reply = []
for a, b in zip(starts, starts[1:]):
    t0 = events[a][3]
    seen = Counter()
    first = {}
    for i in range(a, b):
        who, what = kind(i)
        if who and what:
            seen[(who, what)] += 1
            offsets[(who, what, seen[(who, what)])].append(events[i][3] - t0)
            if what != 'ack read' or ('leader', 'append sent') in first:
                first.setdefault((who, what), events[i][3])
    cycles.append(events[b][3] - t0)
    wal, ack, reply = (first.get(('leader', what)) for what in ('WAL write done', 'ack read', 'reply sent'))
    if wal is not None and ack is not None and reply is not None and max(wal, ack) < reply:
        quorum_to_reply.append(reply - max(wal, ack))
if not cycles:
    sys.exit("cluster-put-timeline: no complete cycle found")


def cpu_share():
    """Each CPU's time per thread over the recording, from sched_switch: {(cpu, tid): µs}."""
    last, run, names = {}, defaultdict(float), {}
    first = end = None
    for pid, tid, cpu, t, name, rest, comm in events:
        first = t if first is None else first
        end = t
        if name != 'sched_switch':
            continue
        m = switch_re.search(rest)
        if not m:
            continue
        names[int(m.group(2))] = m.group(1)
        names[int(m.group(4))] = m.group(3)
        if cpu in last:
            since, who = last[cpu]
            run[(cpu, who)] += t - since
        last[cpu] = (t, int(m.group(4)))
    return run, names, (end - first) if first is not None else 0


run, names, span = cpu_share()
main_cpu = {}
for (cpu, tid), us in sorted(run.items(), key=lambda item: item[1]):
    main_cpu[tid] = cpu


def thread_name(tid):
    if tid in role:
        return role[tid] + (' (m%d)' % leader_member if tid == leader else '') + ' tid %d' % tid
    if tid == 0:
        return 'idle'
    member = member_of_pid.get(pid_of.get(tid))
    return '%s%s tid %d' % (names.get(tid, '?'), '' if member is None else ' (m%d)' % member, tid)


print("\nthreads: leader m%d's raft core (tid %d, mostly on CPU %s), followers %s, client (tid %d, CPU %s)"
      % (leader_member, leader, main_cpu.get(leader, '?'),
         ', '.join('%s (tid %d, CPU %s)' % (role[t], t, main_cpu.get(t, '?')) for t in followers),
         client, main_cpu.get(client, '?')))
print("request %d bytes, reply %s bytes" % (request_size, reply_size))
if status_leader != leader_member:
    print("cluster-put-timeline: warning: etcdctl named m%d the leader, the appends came from m%d"
          % (status_leader, leader_member))

labels = {key for key, values in offsets.items() if len(values) > len(cycles) * 0.5}
repeated = {(who, what) for (who, what, n) in labels if n > 1}
rows = sorted((statistics.median(offsets[key]), statistics.mean(offsets[key]), len(offsets[key]), key)
              for key in labels)
print(f"\n{len(cycles)} cycles (client request sent -> next request sent); offsets from the cycle's start")
print(f"{'event':46s} {'cycles':>6s} {'p50 µs':>8s} {'mean µs':>8s}")
for p50, mean, count, (who, what, n) in rows:
    label = f"{who}: {what}" + (f" #{n}" if (who, what) in repeated else '')
    print(f"{label:46s} {count:6d} {p50:8.1f} {mean:8.1f}")
if quorum_to_reply:
    ordered = sorted(quorum_to_reply)
    print(f"{'leader: its quorum -> reply sent, p50 / mean µs':46s} {len(ordered):6d} "
          f"{percentile(ordered, 0.5):.1f} / {statistics.mean(ordered):.1f}")
ordered = sorted(cycles)
print(f"{'whole cycle: p50 / p90 / p99 / mean µs':46s} {len(cycles):6d} "
      f"{percentile(ordered, 0.5):.1f} / {percentile(ordered, 0.9):.1f} / {percentile(ordered, 0.99):.1f} / "
      f"{statistics.mean(cycles):.1f}")

print(f"\nCPU time by thread over the recording ({span / 1e6:.2f} s, from sched_switch; 1% and more)")
for cpu in sorted({cpu for cpu, _ in run}):
    shares = sorted(((us / span * 100, tid) for (c, tid), us in run.items() if c == cpu and span), reverse=True)
    shown = [f"{thread_name(tid)} {share:.1f}%" for share, tid in shares if share >= 1]
    rest = sum(share for share, _ in shares if share < 1)
    print(f"CPU {cpu}: " + ', '.join(shown + [f"others {rest:.1f}%"]))
EOF
