#!/usr/bin/env bash
# Object storage (issue 23): where the time of a large seed into an
# S3-backed node goes. One s3s-fs server on loopback, one SIZE-byte asset;
# three runs, each sampled every half second:
#   1. a direct multipart upload of the file (examples/s3_put.rs): part
#      files on the server's disk, CPU seconds of the uploader and s3s-fs;
#   2. a seed into an S3-backed node: bytes of the node's partial asset,
#      part files on the server's disk, the object, CPU seconds of the node,
#      the source daemon and s3s-fs;
#   3. a seed into a local node, the same figures.
# The part files fall back to none while the server completes the upload
# (s3s-fs copies the parts into the object and hashes them), so each
# timeline shows the streaming phase and the completion apart.
#
#   cargo build --release --bin can-sync --example s3_put
#   loadtest/scripts/issue23-timeline.sh [SIZE_BYTES]
#
# Needs s3s-fs 0.14.1 and ~3 × SIZE free disk in $TMPDIR. Loopback only.
set -euo pipefail
SIZE=${1:-1073741824}
PORT=${PORT:-19027}
source "$(dirname "$0")/s3-bench-env.sh"
start_s3

echo "issue 23 timeline: SIZE=$SIZE, $(nproc) cores, binary $B ($(git -C "$ROOT" rev-parse --short HEAD))"
head -c "$SIZE" /dev/urandom > payload.bin
"$B" add --data-dir src payload.bin > /dev/null
"$B" daemon --data-dir src --listen 127.0.0.1:0 --no-relay --open read > src.out 2> src.log &
SRCPID=$!
PIDS+=($!)
until [ -s src.out ]; do sleep 0.1; done
TICKET=$("$B" ticket --data-dir src)

cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.1f", ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo -; }
mb() { du -sm "$1" 2>/dev/null | cut -f1 || echo 0; }
parts() { find s3 -maxdepth 1 -name '.upload_id-*' 2>/dev/null | wc -l; }

# watch PID LABEL: samples until PID ends.
watch() {
    local pid=$1 start
    start=$(date +%s.%N)
    while kill -0 "$pid" 2>/dev/null; do
        printf '  t=%4.1f s  partial %5s MB  parts %3s  object %5s MB  CPU s: %s %s, source %s, s3s-fs %s\n' \
            "$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')" \
            "$(mb "$2/store/partial")" "$(parts)" "$(mb "s3/bench/$2")" "$2" "$(cpu "$pid")" "$(cpu $SRCPID)" "$(cpu $S3PID)"
        sleep 0.5
    done
    wait "$pid"
}

echo "== 1. direct multipart upload; load $(cut -d' ' -f1-3 /proc/loadavg)"
sync
"$PUT" payload.bin s3://bench/direct/payload.bin "$S3" > put.out &
watch $! direct
sed 's/^/  /' put.out
rm -rf s3/bench/direct payload.bin

echo "== 2. seed into an S3-backed node; load $(cut -d' ' -f1-3 /proc/loadavg)"
sync
"$B" seed --data-dir s3node --from "$TICKET" --no-relay --json \
    --blobs s3://bench/s3node --s3-endpoint "$S3" > s3node.json &
watch $! s3node
echo "  $(cat s3node.json)"
rm -rf s3/bench/s3node s3node

echo "== 3. seed into a local node; load $(cut -d' ' -f1-3 /proc/loadavg)"
sync
"$B" seed --data-dir local --from "$TICKET" --no-relay --json > local.json &
watch $! local
echo "  $(cat local.json)"
echo "load after: $(uptime)"
