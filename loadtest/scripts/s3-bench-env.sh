# Sourced by the issue 23 scripts (run from the repository's root, with
# PORT set to the script's own default): the binaries measured, credentials
# the s3s-fs server accepts, a scratch folder removed on exit with every
# process listed in PIDS, and `start_s3`.
ROOT=$(pwd)
B=${B:-$ROOT/target/release/can-sync}
PUT=${PUT:-$ROOT/target/release/examples/s3_put}
S3S=${S3S_FS_BIN:-$(command -v s3s-fs || echo "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs")}
S3=http://127.0.0.1:$PORT
export AWS_ACCESS_KEY_ID=can-sync-bench AWS_SECRET_ACCESS_KEY=can-sync-bench-secret AWS_REGION=us-east-1
WORK=$(mktemp -d -p "${TMPDIR:-/var/tmp}")
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
cd "$WORK"

# Starts s3s-fs on loopback at $PORT, its files (bucket `bench`) in
# $WORK/s3, and waits until it answers; its process id is S3PID.
S3PID=
start_s3() {
    mkdir -p s3/bench
    "$S3S" --host 127.0.0.1 --port "$PORT" --access-key "$AWS_ACCESS_KEY_ID" \
        --secret-key "$AWS_SECRET_ACCESS_KEY" s3 > s3.log 2>&1 &
    S3PID=$!
    PIDS+=("$S3PID")
    until curl -s -o /dev/null "$S3/"; do sleep 0.1; done
}
