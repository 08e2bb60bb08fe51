#!/usr/bin/env bash
# Refreshes docs/page.png, the README's picture of the daemon's page: two
# daemons live on loopback, assets written on both for a minute, a dialer
# refused for a wrong capability, then headless Chromium's screenshot of
# node A's page.
#
#   cargo build --release && loadtest/scripts/page-screenshot.sh [OUT.png]
#
# Needs chromium (Debian: apt-get install chromium), curl and python3. Loopback
# only, relays off; Chromium resolves no name.
set -euo pipefail
OUT=$(realpath -m "${1:-docs/page.png}")
SCRIPTS=$(cd "$(dirname "$0")" && pwd)
B=${B:-$(pwd)/target/release/can-sync}
SECONDS_OF_TRAFFIC=${SECONDS_OF_TRAFFIC:-60}
WORK=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
cd "$WORK"

# Starts a daemon in folder $1 with the flags that follow; waits until its
# ticket and --http address are written.
start_daemon() {
    local dir=$1
    shift
    "$B" daemon --data-dir "$dir" --listen 127.0.0.1:0 --http 127.0.0.1:0 --no-relay "$@" \
        > "$dir.out" 2> "$dir.log" &
    PIDS+=($!)
    for _ in $(seq 100); do
        [ -s "$dir.out" ] && break
        sleep 0.1
    done
    [ -s "$dir.out" ] || { echo "daemon $dir did not start; see $dir.log" >&2; exit 1; }
}

start_daemon b --open write
ticket_b=$(cut -d' ' -f2 < b.out)
# A admits nobody by id (it dials B), so the dialer below is refused.
start_daemon a --peer "$ticket_b"
ticket_a=$(cut -d' ' -f2 < a.out)
http_a=$(cat a/http)
http_b=$(cat b/http)
"$B" ticket --data-dir a --grant read --expires 7d > /dev/null 2>&1

# Assets of 64 KiB to 4 MiB on both nodes, written until the screenshot is
# taken, so the page shows rates as well as a chart.
write_assets() {
    local n=0 size target
    while true; do
        size=$(( (RANDOM % 64 + 1) * 65536 ))
        target=$http_b
        [ $((n % 3)) = 0 ] && target=$http_a
        head -c "$size" /dev/urandom |
            curl -sf -X POST -H 'content-type: application/octet-stream' \
                --data-binary @- "http://$target/assets" > /dev/null
        n=$((n + 1))
        sleep 0.2
    done
}
write_assets &
PIDS+=($!)
sleep "$SECONDS_OF_TRAFFIC"

# A dialer that presents a capability A never granted.
"$B" seed --store stranger --no-relay --from "$ticket_a#$(printf 'ab%.0s' $(seq 32))" \
    > /dev/null 2>&1 || true
sleep 3

# Real time, not headless Chromium's virtual time: the page's rates are
# what moved between two of its polls.
"$SCRIPTS/cdp-screenshot.py" "http://$http_a/" "$OUT" 7 1100x1500
assets=$(curl -sf "http://$http_a/status" | grep -o '"assets":[0-9]*' | tail -1 | cut -d: -f2)
echo "wrote $OUT: the page of node A, holding $assets assets"
