#!/usr/bin/env bash
# One 4 GiB incompressible asset crosses protocol v2 between two disk-backed
# CAN servers; prints the peak RSS of each agent (issue 4: each under 256 MiB;
# issue 21: under 128 MiB).
#
#   cargo build --release && loadtest/scripts/big-asset.sh [SIZE_BYTES]
#   STORES=embedded loadtest/scripts/big-asset.sh [SIZE_BYTES]
#
# STORES=embedded: no CAN servers; the asset is added to daemon A's embedded
# store (`can-sync add --data-dir`) and seeded into an embedded store
# (`seed --data-dir`), the path that keeps a large asset received in part.
#
# Needs ~3 × SIZE free disk in $TMPDIR. Loopback only, relays off.
# AGENT_FLAGS="--chunk-bytes ..." passes engine flags to both agents.
set -euo pipefail
SIZE=${1:-4294967296}
B=${B:-$(pwd)/target/release/can-sync}
WORK=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
cd "$WORK"

head -c "$SIZE" /dev/urandom > payload.bin
if [ "${STORES:-can}" = embedded ]; then
    "$B" add --data-dir node-a payload.bin > /dev/null
    rm payload.bin
    "$B" daemon --data-dir node-a --listen 127.0.0.1:0 --no-relay --open read ${AGENT_FLAGS:-} \
        > daemon.out 2> daemon.log &
    DAEMON=$!
    PIDS+=($DAEMON)
    until [ -s daemon.out ]; do sleep 0.1; done
    TICKET=$("$B" ticket --data-dir node-a)
    /usr/bin/time -v "$B" seed --data-dir node-b --from "$TICKET" --no-relay --json ${AGENT_FLAGS:-} \
        2> seed.time || { tail -n 30 seed.time >&2; exit 1; }
    echo "seed agent:   $(grep 'Maximum resident' seed.time | awk '{print $NF}') kB peak RSS," \
        "$(grep 'Elapsed' seed.time | awk '{print $NF}') wall"
    echo "daemon agent: $(grep VmHWM /proc/$DAEMON/status | awk '{print $2}') kB peak RSS"
    exit 0
fi
"$B" serve-can --listen 127.0.0.1:18081 --dir can-a --max-body-bytes $((SIZE + 1)) 2> a.log &
PIDS+=($!)
"$B" serve-can --listen 127.0.0.1:18082 --dir can-b 2> b.log &
PIDS+=($!)
for port in 18081 18082; do
    until curl -sf "http://127.0.0.1:$port/health" > /dev/null; do sleep 0.1; done
done
# -T streams the file instead of reading it into curl's memory.
curl -sf -X POST -T payload.bin -H 'content-type: application/octet-stream' -H 'x-asset-name: big.bin' \
    http://127.0.0.1:18081/assets
echo
rm payload.bin

"$B" daemon --can http://127.0.0.1:18081 --data-dir node-a --listen 127.0.0.1:0 --no-relay --open read ${AGENT_FLAGS:-} \
    > daemon.out 2> daemon.log &
DAEMON=$!
PIDS+=($DAEMON)
until [ -s daemon.out ]; do sleep 0.1; done
TICKET=$("$B" ticket --data-dir node-a)

/usr/bin/time -v "$B" seed --can http://127.0.0.1:18082 --from "$TICKET" --no-relay --json ${AGENT_FLAGS:-} \
    2> seed.time || { tail -n 30 seed.time >&2; exit 1; }
echo "seed agent:   $(grep 'Maximum resident' seed.time | awk '{print $NF}') kB peak RSS," \
    "$(grep 'Elapsed' seed.time | awk '{print $NF}') wall"
echo "daemon agent: $(grep VmHWM /proc/$DAEMON/status | awk '{print $2}') kB peak RSS"
curl -sf http://127.0.0.1:18082/health
echo
