#!/usr/bin/env bash
# Object storage (issue 23): serving small values back from sealed pack
# segments in the bucket. One s3s-fs server on loopback; COUNT × 4 KiB added
# to two nodes, one local and one S3-backed (whose sealed segments move to
# the bucket: COUNT must pass one 128 MiB segment, 40,000 × 4 KiB seals
# one); each served by a daemon, and seeded ROUNDS times into fresh local
# nodes, alternating. Prints each seed's wall time, and for the S3-backed
# source the object-storage requests each seed cost (its /status).
#
#   cargo build --release --bin can-sync
#   loadtest/scripts/issue23-segments.sh [COUNT] [ROUNDS]
#
# Needs s3s-fs 0.14.1 and python3. Loopback only, relays off.
set -euo pipefail
COUNT=${1:-40000}
ROUNDS=${2:-2}
PORT=${PORT:-19025}
HTTP_PORT=${HTTP_PORT:-19026}
source "$(dirname "$0")/s3-bench-env.sh"

start_s3

echo "issue 23 sealed segments: COUNT=$COUNT × 4 KiB, ROUNDS=$ROUNDS, $(nproc) cores, binary $B ($(git -C "$ROOT" rev-parse --short HEAD))"
echo "load before: $(uptime)"
python3 - "$COUNT" <<'EOF'
import os, sys
os.makedirs("small", exist_ok=True)
for i in range(int(sys.argv[1])):
    with open(f"small/{i}.bin", "wb") as f:
        f.write(os.urandom(4096))
EOF
S3FLAGS=(--blobs s3://bench/src-s3 --s3-endpoint "$S3")
"$B" add --data-dir src-local small > /dev/null
"$B" add --data-dir src-s3 "${S3FLAGS[@]}" small > /dev/null
rm -rf small
"$B" daemon --data-dir src-local --listen 127.0.0.1:0 --no-relay --open read > src-local.out 2> src-local.log &
PIDS+=($!)
"$B" daemon --data-dir src-s3 "${S3FLAGS[@]}" --http "127.0.0.1:$HTTP_PORT" \
    --listen 127.0.0.1:0 --no-relay --open read > src-s3.out 2> src-s3.log &
PIDS+=($!)
until [ -s src-local.out ] && [ -s src-s3.out ]; do sleep 0.1; done
# The daemon's offload moves the sealed segments at start: wait for it.
until [ "$(find src-s3/store/packs -type f | wc -l)" = 1 ]; do sleep 0.2; done
echo "sealed segment objects: $(find s3/bench/src-s3/packs -type f | wc -l); local segments left: $(find src-s3/store/packs -type f | wc -l)"
LOCAL=$("$B" ticket --data-dir src-local)
REMOTE=$("$B" ticket --data-dir src-s3)
requests() { curl -s "http://127.0.0.1:$HTTP_PORT/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["object_storage"]["requests"])'; }
secs() { awk -F: '{ if (NF == 3) print $1*3600+$2*60+$3; else print $1*60+$2 }'; }

for round in $(seq 1 "$ROUNDS"); do
    for source in local s3; do
        if [ $source = local ]; then ticket=$LOCAL; else ticket=$REMOTE; fi
        before=$(requests)
        load=$(cut -d' ' -f1 /proc/loadavg)
        /usr/bin/time -v "$B" seed --data-dir "dst-$source-$round" --from "$ticket" --no-relay --json \
            > seed.json 2> seed.time || { tail -n 30 seed.time >&2; exit 1; }
        after=$(requests)
        wall=$(grep 'Elapsed' seed.time | awk '{print $NF}' | secs)
        echo "  round $round, from the $source source: $wall s (load $load), $((after - before)) object requests by the source; $(cat seed.json)"
        rm -rf "dst-$source-$round"
    done
done
echo "load after: $(uptime)"
