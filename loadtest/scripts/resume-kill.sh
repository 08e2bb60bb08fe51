#!/usr/bin/env bash
# Kill at half, resume (issue 21, "done when": after a SIGKILL at half of a
# 2 GiB asset, the next seed moves <= 2% of it again).
#
# Daemon A holds one SIZE-byte incompressible asset in its embedded store
# (`can-sync add --data-dir A`, before A starts). An empty `seed --data-dir B
# --from A` runs until B's store holds KILL_AT bytes on disk (allocated, `du
# -B1`: the partial asset's data file is sparse), then is killed with SIGKILL;
# then `seed` runs again on the same B to the end. RUNS rounds, each on a
# fresh B. Per round it prints what B held at the kill (allocated on disk, and
# the groups the partial asset's state file names, which is what the next
# process trusts), the second seed's `--json` line, and what was sent again:
# the second seed's payload bytes minus what was missing at the kill.
#
#   cargo build --release -p can-sync
#   loadtest/scripts/resume-kill.sh                      # 2 GiB, 3 rounds
#   RUNS=1 AGENT_FLAGS=--no-ranges loadtest/scripts/resume-kill.sh   # the baseline
#
# AGENT_FLAGS go to the daemon and both seeds. Needs ~3 x SIZE free disk in
# $TMPDIR. Loopback only, relays off. Before each round it waits (at most
# LOAD_WAIT seconds) for the 1-minute load average to fall below LOAD_MAX, and
# prints the load it started at.
set -euo pipefail
BIN=${BIN:-$(pwd)/target/release/can-sync}
SIZE=${SIZE:-2147483648}
KILL_AT=${KILL_AT:-$((SIZE / 2))}
RUNS=${RUNS:-3}
LOAD_MAX=${LOAD_MAX:-1.5}
LOAD_WAIT=${LOAD_WAIT:-300}
GROUP=1048576 # bytes per verified group (src/can/store/ranges.rs)
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# The first stdout line of a started process, within 30 s.
first_line() {
    local file=$1
    for _ in $(seq 300); do
        if [ -s "$file" ]; then head -n1 "$file"; return; fi
        sleep 0.1
    done
    echo "no first line in $file" >&2
    exit 1
}

load1() { cut -d' ' -f1 /proc/loadavg; }
wait_load() {
    local waited=0
    while [ "$(echo "$(load1) >= $LOAD_MAX" | bc)" = 1 ] && [ "$waited" -lt "$LOAD_WAIT" ]; do
        sleep 5
        waited=$((waited + 5))
    done
}

# Bytes the partial state files under $1 name as held (groups x GROUP; the
# last group of an asset may be shorter, which this ignores). Format
# (src/can/store/resume.rs): magic(8) size(8) written_ms(8) cv_len(8) cvs
# then the held groups as little-endian u64 bit words.
state_bytes() {
    python3 - "$1" "$GROUP" <<'EOF'
import glob, struct, sys
total = 0
for path in glob.glob(sys.argv[1] + "/*.state"):
    raw = open(path, "rb").read()
    cv_len = struct.unpack_from("<Q", raw, 24)[0]
    bits = raw[32 + cv_len:]
    total += sum(bin(b).count("1") for b in bits) * int(sys.argv[2])
print(total)
EOF
}

# Allocated bytes of the paths given (0 when none exist).
alloc() { { du -s -B1 "$@" 2>/dev/null || true; } | awk '{s += $1} END {print s + 0}'; }

field() { sed "s/.*\"$1\":\([0-9.]*\).*/\1/"; }

head -c "$SIZE" /dev/urandom >"$work/payload.bin"
"$BIN" add --data-dir "$work/a" "$work/payload.bin" >/dev/null
rm "$work/payload.bin"
# shellcheck disable=SC2086
"$BIN" daemon --data-dir "$work/a" --listen 127.0.0.1:0 --no-relay --open read ${AGENT_FLAGS:-} \
    >"$work/daemon.out" 2>"$work/daemon.err" &
pids+=($!)
ticket=$(first_line "$work/daemon.out" | sed 's/^ticket //')
echo "resume-kill: one $SIZE-byte random asset, seed killed at $KILL_AT bytes on disk, $RUNS rounds, agent flags '${AGENT_FLAGS:-}'"

for run in $(seq "$RUNS"); do
    b=$work/b$run
    wait_load
    echo "round $run: load $(load1)"
    # shellcheck disable=SC2086
    "$BIN" seed --data-dir "$b" --from "$ticket" --no-relay --json ${AGENT_FLAGS:-} \
        >"$work/seed1.out" 2>"$work/seed1.err" &
    seed=$!
    pids+=($seed)
    held=0
    while kill -0 "$seed" 2>/dev/null; do
        held=$(alloc "$b/store")
        if [ "$held" -ge "$KILL_AT" ]; then
            kill -9 "$seed"
            break
        fi
        sleep 0.05
    done
    wait "$seed" 2>/dev/null || true
    if [ -s "$work/seed1.out" ]; then
        echo "  the first seed finished before it was killed: $(cat "$work/seed1.out")"
        rm -rf "$b"
        continue
    fi
    on_disk=$(alloc "$b/store")
    partial=$(alloc "$b"/store/partial/*.data)
    in_state=$(state_bytes "$b/store/partial")
    echo "  killed: B's store held $on_disk bytes on disk ($partial in partial data files, $in_state named by the state file)"
    # shellcheck disable=SC2086
    line=$("$BIN" seed --data-dir "$b" --from "$ticket" --no-relay --json ${AGENT_FLAGS:-} 2>"$work/seed2.err")
    echo "  second seed: $line"
    bytes=$(echo "$line" | field bytes)
    wire=$(echo "$line" | field wire_bytes)
    # What the first seed had received: the partial asset's data file, or
    # without one (--no-ranges: a whole-asset stream) what B's store held.
    received=$partial
    [ "$received" -gt 0 ] || received=$on_disk
    missing_disk=$((SIZE - received))
    missing_state=$((SIZE - in_state))
    echo "  second seed moved $bytes payload bytes ($(echo "scale=2; 100 * $bytes / $SIZE" | bc)% of the asset), $wire wire bytes"
    state_note=""
    [ "$partial" -eq 0 ] || state_note=", $((bytes - missing_state)) beyond what the state file did not name"
    echo "  sent again: $((bytes - missing_disk)) bytes beyond what was missing at the kill" \
        "($(echo "scale=3; 100 * ($bytes - $missing_disk) / $SIZE" | bc)% of the asset)$state_note"
    echo "  target: wire bytes <= missing + 2% = $((missing_disk + SIZE / 50)):" \
        "$([ "$wire" -le $((missing_disk + SIZE / 50)) ] && echo pass || echo FAIL)"
    rm -rf "$b"
done
