"""Shared by the python parts of put-timeline.sh and cluster-put-timeline.sh: reading the
io_uring and socket tracepoints of `perf script`, and percentiles."""
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


def received(rest):
    """Bytes a recvfrom returned: 0 for EOF and errors (EAGAIN shows as a huge hex number)."""
    try:
        value = int(rest.split()[-1], 16)
    except (IndexError, ValueError):
        return 0
    return value if value < 1 << 63 else 0


def percentile(ordered, quantile):
    """The value at `quantile` (0 to 1) of an ascending list."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * quantile))]
