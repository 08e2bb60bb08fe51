#!/usr/bin/env bash
# Two sources against one (issue 21, several sources): two daemons, each
# over its own `serve-can --bandwidth RATE` (a CAN that sends every response
# body at RATE bytes/s) holding the same archive; an empty embedded store is
# seeded from one of them, then from both at once (`seed --from A --from B`),
# RUNS times alternating. Prints each run's seconds (the seed's own `secs`)
# and the median ratio. Loopback only, relays off.
#
#   cargo build --release -p can-sync
#   loadtest/scripts/two-sources.sh            # 256 files of 4 MiB at 20 MB/s
#   FILES=64 SIZE_KIB=4096 RATE=20000000 RUNS=3 BIN=target/release/can-sync loadtest/scripts/two-sources.sh
set -euo pipefail
BIN=${BIN:-target/release/can-sync}
RATE=${RATE:-20000000}
FILES=${FILES:-256}
SIZE_KIB=${SIZE_KIB:-4096}
RUNS=${RUNS:-3}
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

mkdir "$work/files"
for i in $(seq "$FILES"); do
    head -c $((SIZE_KIB << 10)) /dev/urandom >"$work/files/f$i"
done
echo "two-sources: $FILES files of $SIZE_KIB KiB, each source's CAN sends bodies at $RATE B/s, $RUNS runs"

tickets=()
for name in a b; do
    "$BIN" serve-can --listen 127.0.0.1:0 --memory --bandwidth "$RATE" >"$work/can-$name.out" 2>"$work/can-$name.err" &
    pids+=($!)
    url=$(first_line "$work/can-$name.out" | sed 's/^listening //')
    "$BIN" add --can "$url" "$work/files" >/dev/null
    "$BIN" daemon --can "$url" --data-dir "$work/node-$name" --listen 127.0.0.1:0 \
        --no-relay --open read >"$work/daemon-$name.out" 2>"$work/daemon-$name.err" &
    pids+=($!)
    tickets+=("$(first_line "$work/daemon-$name.out" | sed 's/^ticket //')")
done

seed() {
    local store=$work/seeded
    rm -rf "$store"
    "$BIN" seed --store "$store" "$@" --no-relay --json | sed 's/.*"secs":\([0-9.]*\).*/\1/'
}

ones=()
twos=()
for run in $(seq "$RUNS"); do
    one=$(seed --from "${tickets[0]}")
    two=$(seed --from "${tickets[0]}" --from "${tickets[1]}")
    ones+=("$one")
    twos+=("$two")
    echo "run $run: one source $one s, two sources $two s, ratio $(echo "$one / $two" | bc -l | cut -c1-4)"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
m1=$(median "${ones[@]}")
m2=$(median "${twos[@]}")
echo "median: one source $m1 s, two sources $m2 s: two are $(echo "$m1 / $m2" | bc -l | cut -c1-4)x faster (issue 21 target: >= 1.8)"
