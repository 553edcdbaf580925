# Sourced by put-timeline.sh and cluster-put-timeline.sh: uprobes on ringd's functions.
#
# add_probe LABEL TAIL adds one uprobe on the function of $RINGD whose mangled name ends with
# TAIL (a regular expression; the hash differs per build), named ${PROBE_PREFIX}_LABEL, so that
# a probe left by another run cannot collide with it, and appends its full event name to the
# array `probes`. Needs RINGD (an absolute path), PROBE_PREFIX (the script's name and PID,
# also what its cleanup removes by pattern), SCRIPT (for messages) and data (a directory).
# A uprobe on the binary fires in every process that runs it.
add_probe() {
  local label=$1 tail=$2 symbol event
  symbol=$(nm "$RINGD" | awk -v tail="$tail" '!found && $3 ~ tail && $3 !~ /drop_in_place/ {print $3; found = 1}')
  [ -n "$symbol" ] || { echo "$SCRIPT: no symbol matching $tail in $RINGD" >&2; exit 2; }
  event="${PROBE_PREFIX}_$label"
  # A local symbol may carry LLVM's ".llvm.<n>" suffix, which the debug info perf probe
  # looks names up in does not have.
  if ! perf probe -q -x "$RINGD" -a "$event=${symbol%%.llvm.*}" >"$data/probe.log" 2>&1; then
    echo "$SCRIPT: perf probe could not add $symbol:" >&2
    cat "$data/probe.log" >&2
    exit 2
  fi
  # perf names the event group after the binary; read the whole name back.
  probes+=("$( (perf probe -l 2>/dev/null || true) | awk -v event="$event" '!found && $1 ~ (":" event "$") {print $1; found = 1}')")
  [ -n "${probes[-1]}" ] || { echo "$SCRIPT: perf probe did not list $event" >&2; exit 2; }
}
