#!/usr/bin/env bash
# Issue 22: `can-sync add --store STORE FILES --json` of 10,000,000 tiny
# files (64 random bytes each, 10,000 folders of 1,000) into an EMPTY
# embedded store. Measures:
#   - total wall time, user and system CPU seconds, peak RSS (GNU time -v);
#   - the time before the first file went in (start until the progress bar
#     first says "adding": the walk and the pass that hashes a run of files
#     before adding it by hash) and, for each successive million files added, the wall
#     time, rate, CPU seconds and mean 1-minute load average;
#   - the load average (/proc/loadavg) and the process's CPU, RSS and bytes
#     written, sampled every $SAMPLE seconds;
#   - the store's size on disk (du -sb, du -sB1) at the end.
#
# The per-million split comes from the command's own progress bar (bytes
# added; each file is 64 bytes, so bytes / 64 = files): `add` runs under
# script(1) so that its stderr is a terminal and the bar draws, and
# script's --log-timing records when each piece of output arrived. The bar
# moves once per committed batch (8,192 to ~84,000 files), so each
# "million" is the interval between the first bar updates at or past
# k million files; its file count is given as measured.
#
# The input files live on a loop-mounted ext4 image made for tiny files
# (1 KiB blocks, 256-byte inodes, inline_data: a 64-byte file lives in its
# inode), so 10M files take ~3 GB instead of 40 GB. They are written just
# before the run and `sync`ed (no drop_caches): the run reads them from the
# page cache. The store goes in $WORK/store on the host filesystem.
#
# Run as root (mkfs, mount), from anywhere:
#   cargo build --release --bin can-sync
#   sudo loadtest/scripts/add-10m.sh | tee loadtest/results/issue22-add-10m.txt
# Environment (defaults): CAN_SYNC (target/release/can-sync of this repo),
#   WORK (/var/tmp/add-10m: image and store), MNT (/mnt/files10m),
#   FOLDERS (10000), PER (1000), STEP (1000000 files a table row),
#   SAMPLE (5 s), IMG_SIZE (12G), MOUNT_OPTS (loop), KEEP (0; 1 keeps the
#   image, mount and store), REUSE (0; 1 adds the files a KEEP=1 run left
#   mounted at $MNT instead of making new ones; remove its store first).
# Needs ~3.5 GB free for the image, ~6-8 GB for the store, ~3 GB of RAM for
# the run, python3, script(1) from util-linux, GNU time at /usr/bin/time.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CAN_SYNC=${CAN_SYNC:-$ROOT/target/release/can-sync}
WORK=${WORK:-/var/tmp/add-10m}
MNT=${MNT:-/mnt/files10m}
FOLDERS=${FOLDERS:-10000}
PER=${PER:-1000}
STEP=${STEP:-1000000}
SAMPLE=${SAMPLE:-5}
IMG_SIZE=${IMG_SIZE:-12G}
MOUNT_OPTS=${MOUNT_OPTS:-loop}
KEEP=${KEEP:-0}
REUSE=${REUSE:-0}
IMG=$WORK/files.img
STORE=$WORK/store
RUN=$WORK/run
FILES=$((FOLDERS * PER))

[ "$(id -u)" = 0 ] || { echo "run as root (mkfs, mount)" >&2; exit 1; }
[ -x "$CAN_SYNC" ] || { echo "no can-sync binary at $CAN_SYNC" >&2; exit 1; }
[ ! -e "$STORE" ] || { echo "$STORE exists; the store must start empty" >&2; exit 1; }
if [ "$REUSE" = 1 ]; then
    mountpoint -q "$MNT" && [ -d "$MNT/files" ] || { echo "REUSE=1: nothing mounted at $MNT" >&2; exit 1; }
else
    ! mountpoint -q "$MNT" || { echo "$MNT is already mounted" >&2; exit 1; }
fi

SAMPLER=
cleanup() {
    [ -z "$SAMPLER" ] || kill "$SAMPLER" 2>/dev/null || true
    if [ "$KEEP" != 1 ]; then
        mountpoint -q "$MNT" && umount "$MNT"
        rm -rf "$IMG" "$STORE" "$RUN"
    fi
}
trap cleanup EXIT

mkdir -p "$WORK" "$MNT" "$RUN"
echo "# issue 22: can-sync add of $FILES tiny files (64 random bytes, $FOLDERS folders of $PER) into an empty embedded store"
echo "# binary $CAN_SYNC ($(stat -c '%s bytes, %y' "$CAN_SYNC")); repo $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo ?)"
echo "# $(nproc) cores, $(free -g | awk '/^Mem:/ { print $2 " GiB RAM" }'); $(uptime)"

if [ "$REUSE" = 1 ]; then
echo "== reusing the files at $MNT/files (made by an earlier run), synced, read from the page cache"
sync
else
echo "== image: $IMG ($IMG_SIZE, ext4 -b 1024 -I 256 -O inline_data) on $MNT"
rm -f "$IMG"
truncate -s "$IMG_SIZE" "$IMG"
# Inode tables zeroed now, not by ext4lazyinit during the run.
mkfs.ext4 -q -F -b 1024 -I 256 -N $((FILES + FOLDERS + 100000)) -O inline_data \
    -E lazy_itable_init=0,lazy_journal_init=0 "$IMG"
mount -o "$MOUNT_OPTS" "$IMG" "$MNT"
mkdir "$MNT/files"

echo "== making $FILES files; load $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$MNT/files" "$FOLDERS" "$PER" <<'EOF'
import os, sys, time
root, folders, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
start = time.monotonic()
flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
for d in range(folders):
    folder = f"{root}/d{d:05}"
    os.mkdir(folder)
    for i in range(per):
        fd = os.open(f"{folder}/f{i:04}", flags, 0o644)
        os.write(fd, os.urandom(64))
        os.close(fd)
    if (d + 1) % 1000 == 0 or d + 1 == folders:
        secs = time.monotonic() - start
        print(f"  {(d + 1) * per} files in {secs:.0f} s ({(d + 1) * per / secs:.0f}/s)", flush=True)
EOF
sync
echo "  input: $(df -h --output=used,size "$MNT" | tail -1 | xargs) used/size; $(df --output=iused,itotal "$MNT" | tail -1 | xargs) inodes used/total; $(du -sB1 "$IMG" | cut -f1) bytes of image on the host disk"
echo "  the files were just written and synced, not dropped from the page cache: the run reads them from memory"
fi
echo "  host: $(df -h --output=avail "$WORK" | tail -1 | xargs) free in $WORK"

CMD="$CAN_SYNC add --store $STORE $MNT/files --json"
echo "== run: $CMD"
echo "   (under script(1) so the progress bar draws; GNU time -v around can-sync); $(uptime)"
T0=$(date +%s.%N)
env TERM=xterm script -q -f --log-out "$RUN/out" --log-timing "$RUN/timing" \
    -c "stty cols 160 rows 40; echo \$\$ > $RUN/pid; exec /usr/bin/time -v -o $RUN/time.txt $CMD" \
    > /dev/null < /dev/null &
SCRIPT_PID=$!

# Every $SAMPLE s: epoch, 1-min load, can-sync's CPU ticks, RSS, bytes written.
(
    hz=$(getconf CLK_TCK)
    # The process name is the binary's, cut to 15 characters (comm).
    comm=$(basename "$CAN_SYNC" | cut -c1-15)
    until [ -s "$RUN/pid" ] && pid=$(pgrep -P "$(cat "$RUN/pid")" -x "$comm"); do
        [ -e "/proc/$SCRIPT_PID" ] || exit 0
        sleep 0.05
    done
    echo "$pid" > "$RUN/can-sync.pid"
    while [ -e "/proc/$pid" ]; do
        {
            read -r load _ < /proc/loadavg
            read -r -a stat < <(sed 's/.*) //' "/proc/$pid/stat")
            rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
            wrote=$(awk '/^write_bytes:/ { print $2 }' "/proc/$pid/io")
            # stat fields from state (3): utime is 14, stime 15.
            printf '%s %s %s %s %s\n' "$(date +%s.%N)" "$load" \
                "$(awk -v u="${stat[11]}" -v s="${stat[12]}" -v hz="$hz" 'BEGIN { printf "%.2f", (u + s) / hz }')" \
                "$rss" "$wrote"
        } 2>/dev/null >> "$RUN/samples" || true
        sleep "$SAMPLE"
    done
) &
SAMPLER=$!
wait "$SCRIPT_PID"
wait "$SAMPLER" || true
SAMPLER=

echo "== result; $(uptime)"
grep -ao '{"added"[^}]*}' "$RUN/out" || { echo "no JSON line; output:"; tail -c 2000 "$RUN/out"; exit 1; }
grep -E 'Command being|User time|System time|Percent of CPU|Elapsed|Maximum resident|File system|context switches|Exit status' "$RUN/time.txt"
echo "== store: $(du -sb "$STORE" | cut -f1) bytes (du -sb), $(du -sB1 "$STORE" | cut -f1) bytes allocated (du -sB1)"
ls -l "$STORE" | sed 's/^/   /'

python3 - "$RUN" "$T0" "$STEP" "$FILES" "$SAMPLE" <<'EOF'
import re, sys
run, t0, step, files, sample = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
units = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
bar = re.compile(rb"adding \[[^\]]*\] ([\d.]+) (B|KiB|MiB|GiB)/")
out = open(f"{run}/out", "rb").read()
# Bar updates: (seconds since start, files added); the JSON line ends it.
points, t, offset, end = [], 0.0, 0, None
header = out.index(b"\n") + 1  # script's "Script started" line is not in the timing
offset = header
for line in open(f"{run}/timing"):
    delay, size = line.split()
    t += float(delay)
    chunk = out[offset:offset + int(size)]
    offset += int(size)
    found = bar.findall(chunk)
    if found:
        value, unit = found[-1]
        points.append((t, round(float(value) * units[unit.decode()] / 64)))
    if end is None and b'{"added"' in chunk:
        end = t
if not points or end is None:
    sys.exit("no progress bar or no JSON line in the output")
points.append((end, files))
samples = []
for line in open(f"{run}/samples"):
    epoch, load, cpu, rss, wrote = line.split()
    samples.append((float(epoch) - t0, float(load), float(cpu), int(rss), int(wrote)))

def cpu_at(t):
    """CPU seconds at t, interpolated between samples."""
    before = [s for s in samples if s[0] <= t]
    after = [s for s in samples if s[0] >= t]
    if not before:
        return 0.0
    if not after:
        return samples[-1][2]
    (ta, _, ca, _, _), (tb, _, cb, _, _) = before[-1], after[0]
    return ca if tb == ta else ca + (cb - ca) * (t - ta) / (tb - ta)

scan = points[0][0]
print(f"== before the first file went in (the walk and, since add sorts by hash, the pass that hashes a run): {scan:.1f} s, CPU {cpu_at(scan):.1f} s")
print(f"== adding: {end - scan:.1f} s, {files / (end - scan):,.0f} files/s; start to JSON line {end:.1f} s")
print(f"== per {step:,} files (each row from the first bar update at or past its start to the one at or past its end)")
print(f"{'files':>10} {'to (s)':>8} {'wall s':>7} {'files in':>9} {'files/s':>8} {'CPU s':>6} {'CPU %':>6} {'load1':>6} {'RSS MB':>7}")
rows, previous = [], points[0]
for k in range(1, (files + step - 1) // step + 1):
    target = min(k * step, files)
    here = next(p for p in points if p[1] >= target)
    wall = here[0] - previous[0]
    count = here[1] - previous[1]
    cpu = cpu_at(here[0]) - cpu_at(previous[0])
    inside = [s for s in samples if previous[0] <= s[0] <= here[0]]
    load = sum(s[1] for s in inside) / len(inside) if inside else float("nan")
    rss = max((s[3] for s in inside), default=0) / 1024
    rate = count / wall if wall > 0 else float("nan")
    rows.append(rate)
    print(f"{target:>10,} {here[0]:>8.1f} {wall:>7.1f} {count:>9,} {rate:>8,.0f} {cpu:>6.1f} "
          f"{100 * cpu / wall if wall else 0:>6.0f} {load:>6.2f} {rss:>7.0f}")
    previous = here
print(f"== last {step:,} vs first: {rows[-1]:,.0f} / {rows[0]:,.0f} files/s = {rows[-1] / rows[0]:.2f}")
loads = [s[1] for s in samples]
print(f"== 1-min load average during the run: min {min(loads):.2f}, max {max(loads):.2f}, "
      f"mean {sum(loads) / len(loads):.2f} ({len(loads)} samples every {sample} s)")
print(f"== samples: t (s since start), 1-min load, can-sync CPU s, RSS MB, MB written")
for t, load, cpu, rss, wrote in samples:
    print(f"  {t:7.1f} {load:6.2f} {cpu:8.1f} {rss / 1024:7.0f} {wrote / 1e6:9.0f}")
EOF
