#!/bin/bash
# Two ringd builds against each other: `ringbench compare --servers ringd --ringd <build>`
# over one scenario file, PAIRS times, with the order of the two builds alternated from one
# pair to the next (on this project's VM the first run of a pair was the faster in 13 of 16
# pairs, so an A/B that always runs one build first measures the order). Prints each run's
# rows, then per row each build's mean req/s (and its range), the ratio of the means, the
# mean server CPU per request and the mean p99.
#
#   bash tuning/ab-compare.sh OLD_RINGD NEW_RINGD SCENARIO.toml
#
# Env: PAIRS (default 3), DATA_ROOT (ringbench compare's --data-root, for both builds; by
# default a new directory under target/, removed at the end; put it on a RAM disk to take
# the device out, e.g. a zram device as tuning/ram-disk-compare.sh makes), SCALE
# (--scale, default 1), RINGBENCH (default target/release/ringbench).
# Every run starts a fresh ringd on a fresh data dir and stops it (ringbench compare does).
set -euo pipefail

[ "$#" -eq 3 ] || { echo "usage: $0 OLD_RINGD NEW_RINGD SCENARIO.toml" >&2; exit 2; }
old=$(realpath "$1")
new=$(realpath "$2")
scenario=$3
PAIRS=${PAIRS:-3}
SCALE=${SCALE:-1}
RINGBENCH=${RINGBENCH:-$(dirname "$0")/../target/release/ringbench}
for binary in "$old" "$new" "$RINGBENCH"; do
    [ -x "$binary" ] || { echo "$0: $binary is not an executable (cargo build --release?)" >&2; exit 2; }
done
[ -f "$scenario" ] || { echo "$0: no scenario file $scenario" >&2; exit 2; }
# One data root for both builds, so that both write to the same file system (ringbench
# compare's default is a directory next to each ringd binary).
made_root=
if [ -z "${DATA_ROOT:-}" ]; then
    mkdir -p "$(dirname "$0")/../target"
    DATA_ROOT=$(mktemp -d "$(dirname "$0")/../target/ab-compare.XXXXXX")
    made_root=$DATA_ROOT
fi
root_args=(--data-root "$DATA_ROOT")

runs=$(mktemp)
errors=$(mktemp)
trap 'rm -f "$runs" "$errors"; [ -z "$made_root" ] || rm -rf "$made_root"' EXIT
run() {
    local label=$1 binary=$2 table rows
    echo "== $label ($binary)"
    table=$("$RINGBENCH" compare --servers ringd --ringd "$binary" "${root_args[@]}" --scale "$SCALE" \
        --scenario "$scenario" 2>"$errors") || {
        echo "$0: ringbench compare failed with $binary (its data and logs are kept):" >&2
        tail -n 5 "$errors" >&2
        made_root=
        exit 1
    }
    # Rows of the table with one server: | scenario | req/s | p50 ms | p99 ms | errors |
    # server CPU µs/req | ringbench CPU µs/req |
    rows=$(grep '^| ' <<<"$table" | grep -v -e '^| scenario' -e '^| ---')
    echo "$rows"
    sed "s/^/$label /" <<<"$rows" >>"$runs"
}
for pair in $(seq 1 "$PAIRS"); do
    if [ $((pair % 2)) = 1 ]; then
        run old "$old"
        run new "$new"
    else
        run new "$new"
        run old "$old"
    fi
done

echo
echo "| scenario | old req/s (range) | new req/s (range) | new/old | server CPU µs/req old / new | p99 ms old / new |"
echo "| --- | --- | --- | --- | --- | --- |"
awk -F'|' '
    {
        split($1, head, " "); build = head[1]
        name = $2; gsub(/^ +| +$/, "", name)
        if (!(name in seen)) { seen[name] = 1; order[++rows] = name }
        key = build SUBSEP name
        reqs = $3 + 0; n[key]++; sum[key] += reqs; cpu[key] += $7; p99[key] += $5
        if (!(key in low) || reqs < low[key]) low[key] = reqs
        if (!(key in high) || reqs > high[key]) high[key] = reqs
    }
    END {
        for (i = 1; i <= rows; i++) {
            name = order[i]; o = "old" SUBSEP name; w = "new" SUBSEP name
            if (!n[o] || !n[w]) continue
            mo = sum[o] / n[o]; mw = sum[w] / n[w]
            printf "| %s | %.0f (%.0f to %.0f) | %.0f (%.0f to %.0f) | %.3f | %.1f / %.1f | %.3f / %.3f |\n",
                name, mo, low[o], high[o], mw, low[w], high[w], (mo > 0 ? mw / mo : 0),
                cpu[o] / n[o], cpu[w] / n[w], p99[o] / n[o], p99[w] / n[w]
        }
    }' "$runs"
echo
echo "$PAIRS pairs, order alternated; scenario $scenario, data dirs under $DATA_ROOT"
