#!/bin/sh
# The packed-threshold sweep of issue 22: each size as files and as packed values.
for size in 64KiB 128KiB 256KiB 512KiB; do
  for limit in 1 67108864; do
    echo "== size $size packed_limit $limit $(uptime)"
    CAN_SYNC_PACKED_LIMIT=$limit timeout 900 ./target/release/loadtest vs-rsync \
      --files 2000 --file-size $size --large 1MiB --dir /var/tmp/segm 2>&1 |
      grep -E "^(rsync|can-sync v2) "
  done
done
