"""Shared by the python parts of put-timeline.sh and cluster-put-timeline.sh: reading the
io_uring tracepoints of `perf script`."""
import re


def request(rest):
    """The (ring, request) pair that ties an io_uring submission to its completion."""
    m = re.search(r'ring (0x[0-9a-f]+), req (0x[0-9a-f]+)', rest)
    return m.groups() if m else None


def wal_result(rest):
    """Whether a completion is a direct write's: a positive multiple of 4 KiB (glommio's other
    writes on the same ring, such as its preemption timer's 8-byte eventfd write, are not)."""
    m = re.search(r'result (-?\d+)', rest)
    return bool(m) and int(m.group(1)) > 0 and int(m.group(1)) % 4096 == 0
