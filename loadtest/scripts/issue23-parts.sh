#!/usr/bin/env bash
# Object storage (issue 23): the part size and parts in flight of a large
# upload, swept. For each configuration PARTxIN_FLIGHT (MiB × parts, e.g.
# 8x4), ROUNDS times in turn, on one s3s-fs server on loopback:
#   - a direct multipart upload of a SIZE-byte file (examples/s3_put.rs,
#     the same client) with that part size and that many parts in flight;
#   - a seed of the same bytes into an S3-backed node (verified ranges, the
#     default) with the same part size and parts in flight;
# and prints, per pair: wall seconds, the ratio (upload s ÷ seed s), the
# seeding node's peak RSS, the load average before each, and the CPU
# seconds (user + system) each took: the uploader's and s3s-fs's for the
# direct upload; the seeding node's, the source daemon's and s3s-fs's for
# the seed.
#
#   cargo build --release --bin can-sync --example s3_put
#   loadtest/scripts/issue23-parts.sh [SIZE_BYTES] [ROUNDS] CONFIG...
#   loadtest/scripts/issue23-parts.sh 1073741824 2 8x4 12x3 16x2
#
# Needs s3s-fs 0.14.1 and ~3 × SIZE free disk in $TMPDIR. Loopback only.
set -euo pipefail
SIZE=${1:-1073741824}
ROUNDS=${2:-2}
shift 2 || true
CONFIGS=("$@")
[ ${#CONFIGS[@]} -gt 0 ] || CONFIGS=(8x4)
PORT=${PORT:-19024}
source "$(dirname "$0")/s3-bench-env.sh"

start_s3

echo "issue 23 part sweep: SIZE=$SIZE ROUNDS=$ROUNDS configs ${CONFIGS[*]}, $(nproc) cores, binary $B ($(git -C "$ROOT" rev-parse --short HEAD))"
echo "load before: $(uptime)"
head -c "$SIZE" /dev/urandom > payload.bin
"$B" add --data-dir src payload.bin > /dev/null
"$B" daemon --data-dir src --listen 127.0.0.1:0 --no-relay --open read > src.out 2> src.log &
PIDS+=($!)
SRCPID=$!
until [ -s src.out ]; do sleep 0.1; done
TICKET=$("$B" ticket --data-dir src)

secs() { awk -F: '{ if (NF == 3) print $1*3600+$2*60+$3; else print $1*60+$2 }'; }
load() { cut -d' ' -f1 /proc/loadavg; }
# CPU seconds (user + system) process PID has used so far.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }
# CPU seconds of a finished command, from its /usr/bin/time -v output.
cpu_of() { awk '/User time|System time/ { s += $NF } END { printf "%.2f", s }' "$1"; }
since() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

printf '%-6s %5s %10s %6s %10s %6s %7s %9s   %s\n' config round "upload s" load "seed s" load ratio "seed RSS" \
    "CPU s: upload (uploader + s3s-fs) | seed (node + source + s3s-fs)"
for round in $(seq 1 "$ROUNDS"); do
    for config in "${CONFIGS[@]}"; do
        part=${config%x*}
        export CAN_SYNC_S3_PART_BYTES=$((part * 1024 * 1024)) CAN_SYNC_S3_PARTS_IN_FLIGHT=${config#*x}
        sync
        load_up=$(load)
        s3_0=$(cpu $S3PID)
        up=$(/usr/bin/time -v -o put.time "$PUT" payload.bin "s3://bench/direct-$config-$round/payload.bin" "$S3" | sed -E 's/.* in ([0-9.]+) s.*/\1/')
        s3_1=$(cpu $S3PID) src_1=$(cpu $SRCPID)
        rm -rf "s3/bench/direct-$config-$round"
        sync
        load_seed=$(load)
        /usr/bin/time -v "$B" seed --data-dir "node-$config-$round" --from "$TICKET" --no-relay --json \
            --blobs "s3://bench/seed-$config-$round" --s3-endpoint "$S3" \
            > seed.json 2> seed.time || { tail -n 30 seed.time >&2; exit 1; }
        s3_2=$(cpu $S3PID) src_2=$(cpu $SRCPID)
        objects=$(find "s3/bench/seed-$config-$round/blobs" -type f | wc -l)
        [ "$objects" = 1 ] || { echo "expected one blob object, found $objects" >&2; exit 1; }
        wall=$(grep 'Elapsed' seed.time | awk '{print $NF}' | secs)
        rss=$(grep 'Maximum resident' seed.time | awk '{print $NF}')
        ratio=$(awk -v u="$up" -v s="$wall" 'BEGIN { printf "%.2f", u / s }')
        printf '%-6s %5s %10s %6s %10s %6s %7s %5s MiB   %s + %s | %s + %s + %s\n' "$config" "$round" "$up" "$load_up" "$wall" "$load_seed" "$ratio" $((rss / 1024)) \
            "$(cpu_of put.time)" "$(since "$s3_0" "$s3_1")" "$(cpu_of seed.time)" "$(since "$src_1" "$src_2")" "$(since "$s3_1" "$s3_2")"
        rm -rf "s3/bench/seed-$config-$round" "node-$config-$round"
    done
done
echo "load after: $(uptime)"
