#!/usr/bin/env bash
# Object storage (issue 23), against a real S3 server (s3s-fs) on loopback,
# every figure in one run on the same server:
#   1. one SIZE-byte asset (1 GiB by default) seeded into an S3-backed node,
#      by verified ranges (the default) and whole (--no-ranges), against a
#      direct multipart upload of the same bytes (examples/s3_put.rs: the same
#      part size and parts in flight) and against a seed into a local node;
#   2. 10,000 × 4 KiB seeded into an S3-backed node against a local one;
#   3. peak RSS of every seeding node;
#   4. the server killed midway through a large seed (one streamed PUT),
#      whole and by ranges: the server comes back, a second seed completes,
#      fsck reads every object back and finds it whole, and the bucket holds
#      no other blob object.
#
#   cargo build --release --bin can-sync --example s3_put
#   loadtest/scripts/issue23.sh [SIZE_BYTES] [SMALL_FILES]
#
# Needs s3s-fs (cargo install s3s-fs --version 0.14.1 --features binary
# --locked) and ~4 × SIZE free disk in $TMPDIR. Loopback only, relays off.
set -euo pipefail
SIZE=${1:-1073741824}
SMALL=${2:-10000}
PORT=${PORT:-19023}
source "$(dirname "$0")/s3-bench-env.sh"

# seed NAME FLAGS...: seeds the node folder NAME from $TICKET; prints wall
# seconds, peak RSS and the session's report.
seed() {
    local name=$1
    shift
    /usr/bin/time -v "$B" seed --data-dir "$name" --from "$TICKET" --no-relay --json "$@" \
        > "$name.json" 2> "$name.time" || { tail -n 30 "$name.time" >&2; return 1; }
    local wall rss
    wall=$(grep 'Elapsed' "$name.time" | awk '{print $NF}')
    rss=$(grep 'Maximum resident' "$name.time" | awk '{print $NF}')
    echo "  $name: wall $wall, peak RSS $((rss / 1024)) MiB; $(cat "$name.json")"
}

# Wall clock of the last seed of NAME, in seconds.
wall_secs() {
    grep 'Elapsed' "$1.time" | awk '{print $NF}' | awk -F: '{ if (NF == 3) print $1*3600+$2*60+$3; else print $1*60+$2 }'
}

daemon() {
    "$B" daemon --data-dir "$1" --listen 127.0.0.1:0 --no-relay --open read > "$1.out" 2> "$1.log" &
    PIDS+=($!)
    until [ -s "$1.out" ]; do sleep 0.1; done
    TICKET=$("$B" ticket --data-dir "$1")
}

echo "issue 23 object storage: SIZE=$SIZE SMALL=$SMALL, $(nproc) cores, binary $B"
echo "load before: $(uptime)"
start_s3

echo "== 1. one large asset"
head -c "$SIZE" /dev/urandom > payload.bin
"$B" add --data-dir large-src payload.bin > /dev/null
HASH=$(find large-src/store/blobs -type f -printf '%f\n' | head -1)
daemon large-src
LARGE_TICKET=$TICKET
echo "  load: $(cut -d' ' -f1-3 /proc/loadavg)"
"$PUT" payload.bin s3://bench/direct/payload.bin "$S3" | sed 's/^/  /'
echo "  load: $(cut -d' ' -f1-3 /proc/loadavg)"
seed large-s3 --blobs s3://bench/large-s3 --s3-endpoint "$S3"
echo "  load: $(cut -d' ' -f1-3 /proc/loadavg)"
seed large-s3-whole --no-ranges --blobs s3://bench/large-s3-whole --s3-endpoint "$S3"
echo "  load: $(cut -d' ' -f1-3 /proc/loadavg)"
seed large-local
echo "  load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  blob objects: $(find s3/bench/large-s3/blobs -type f | wc -l) (ranges), $(find s3/bench/large-s3-whole/blobs -type f | wc -l) (whole); name $(find s3/bench/large-s3/blobs -type f -printf '%f\n' | head -1)"
echo "  source's blob: $HASH"
rm -f payload.bin

echo "== 2. $SMALL × 4 KiB"
mkdir small
for i in $(seq 1 "$SMALL"); do head -c 4096 /dev/urandom > "small/$i.bin"; done
"$B" add --data-dir small-src small > /dev/null
rm -rf small
daemon small-src
for round in 1 2; do
    echo "  load: $(cut -d' ' -f1-3 /proc/loadavg)"
    seed "small-local-$round"
    echo "  load: $(cut -d' ' -f1-3 /proc/loadavg)"
    seed "small-s3-$round" --blobs "s3://bench/small-s3-$round" --s3-endpoint "$S3"
done
echo "  sealed segment objects: $(find s3/bench/small-s3-1/packs -type f 2>/dev/null | wc -l)"

# kill_midway NAME UPLOADING FLAGS...: seeds node NAME from the large
# asset with FLAGS, SIGKILLs the server once a file matching UPLOADING (a
# glob under s3/) shows the upload under way, starts it again 3 s later,
# then seeds again and checks the bucket with fsck.
kill_midway() {
    local name=$1 uploading=$2
    shift 2
    TICKET=$LARGE_TICKET
    "$B" seed --data-dir "$name" --from "$TICKET" "$@" \
        --no-relay --json --blobs "s3://bench/$name" --s3-endpoint "$S3" > "$name-1.json" 2> "$name-1.log" &
    SEED=$!
    until compgen -G "s3/$uploading" > /dev/null; do sleep 0.05; done
    sleep 1
    kill -9 "$S3PID"
    echo "  server killed (SIGKILL) mid-upload: $(du -cb s3/$uploading | tail -n1 | cut -f1) bytes of it on its disk"
    sleep 3
    start_s3
    echo "  server back after 3 s"
    if wait "$SEED"; then echo "  first seed: exit 0: $(cat "$name-1.json")"; else echo "  first seed failed: $(grep -v '^\s*$' "$name-1.log" | grep -v '^ *[0-9]*: \|^ *at \|^Stack backtrace' | tail -n 3 | tr '\n' ' ')"; fi
    seed "$name" "$@" --blobs "s3://bench/$name" --s3-endpoint "$S3"
    "$B" fsck --data-dir "$name" --blobs "s3://bench/$name" --s3-endpoint "$S3" | sed 's/^/  fsck: /'
    echo "  blob objects under $name: $(find "s3/bench/$name/blobs" -type f -printf '%f\n' | tr '\n' ' ')"
}

# Both upload as one streamed PUT (the size is known from the peer's
# header); a cut one is left as the server's temporary file.
echo "== 3. kill the server midway through a large seed, whole (no local copy: the seed fails)"
kill_midway kill-s3 '.tmp.*.internal.part' --no-ranges
echo "== 3b. the same by verified ranges (the partial asset's local copy goes up instead)"
rm -f s3/.tmp.*.internal.part
kill_midway kill-s3-ranged '.tmp.*.internal.part'
echo "load after: $(uptime)"
