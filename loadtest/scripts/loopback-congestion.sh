#!/bin/sh
# One large asset over loopback between two on-disk stores, per congestion
# controller, alternating (issue 21; the loopback figure of PERFORMANCE.md's
# "WAN and outages"): `can-sync daemon --store A` serves it, `can-sync seed
# --store B` pulls it, both with the same `--congestion`; timed spawn to exit
# of the seed, as the other loopback rows are.
#
#   loadtest/scripts/loopback-congestion.sh [CONTROLLER...]   (default: cubic bbr auto)
#   env: BIN (./target/release/can-sync), RUNS (3), SIZE_MIB (256)
set -eu
BIN=${BIN:-./target/release/can-sync}
RUNS=${RUNS:-3}
SIZE_MIB=${SIZE_MIB:-256}
CONTROLLERS=${*:-cubic bbr auto}
W=$(mktemp -d)
DPID=
cleanup() {
    [ -n "$DPID" ] && kill "$DPID" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT INT TERM

# Random bytes: zstd cannot shrink them, so the transport carries them all.
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$W/large"
"$BIN" add --store "$W/a" "$W/large" >/dev/null
echo "# $(date -u +%FT%TZ) $SIZE_MIB MiB, $RUNS runs; load: $(cut -d' ' -f1-3 /proc/loadavg)"
for run in $(seq "$RUNS"); do
    for c in $CONTROLLERS; do
        rm -rf "$W/b" "$W/node"
        mkdir -p "$W/node"
        "$BIN" daemon --store "$W/a" --data-dir "$W/node" --listen 127.0.0.1:0 \
            --no-relay --open write --congestion "$c" >"$W/daemon.out" 2>"$W/daemon.err" &
        DPID=$!
        # The daemon prints its ticket first, once it listens; 30 s at most.
        # The line counts once whole (ends in a newline): a half-written one
        # would give seed half a ticket.
        tries=0
        until grep -q '^ticket ' "$W/daemon.out" && [ -z "$(tail -c 1 "$W/daemon.out")" ]; do
            tries=$((tries + 1))
            [ "$tries" -le 600 ] || { echo "no ticket from the daemon" >&2; exit 1; }
            sleep 0.05
        done
        ticket=$(sed -n 's/^ticket //p' "$W/daemon.out" | head -n 1)
        start=$(date +%s.%N)
        timeout 300 "$BIN" seed --store "$W/b" --from "$ticket" --json --no-relay \
            --congestion "$c" >"$W/seed.json"
        end=$(date +%s.%N)
        kill "$DPID"
        wait "$DPID" || true
        DPID=
        secs=$(echo "$end - $start" | bc)
        printf 'run %s %-6s %6.3f s  load %s  %s\n' "$run" "$c" "$secs" \
            "$(cut -d' ' -f1 /proc/loadavg)" "$(cat "$W/seed.json")"
    done
done
