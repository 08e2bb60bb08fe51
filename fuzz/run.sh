#!/usr/bin/env bash
# Runs every fuzz target of this crate in turn, SECONDS each (default 60),
# and reports per target: executions, coverage, and whether it crashed.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Needs the nightly toolchain (`rustup toolchain install nightly`); installs
# cargo-fuzz from the crates registry when it is missing. Runs at low
# priority (nice 10; NICE=0 to change) and one job at a time, so other builds
# keep the machine. Each target's log is artifacts/<target>/run.log; crashes
# land in artifacts/<target>/ (minimise one with
# `cargo +nightly fuzz tmin <target> <file>`), the corpus in corpus/<target>/.
set -euo pipefail

cd "$(dirname "$0")"
SECS=${1:-60}
shift || true
ALL=(frame_decoder control_messages recon_codec store_records http_bodies)
TARGETS=("${@:-${ALL[@]}}")
NICE=${NICE:-10}

# The largest input worth generating, per target.
max_len() {
  case $1 in
    frame_decoder) echo 8192 ;;
    control_messages | recon_codec) echo 16384 ;;
    store_records) echo 512 ;;
    http_bodies) echo 8192 ;;
    *) echo 4096 ;;
  esac
}

# Extra libFuzzer flags, per target. store_records opens a store per input
# (a few inputs a second): too few runs for libFuzzer to grow the input
# length on its own, so it starts at the full -max_len.
extra() {
  case $1 in
    store_records) echo -len_control=0 ;;
  esac
}

if ! command -v cargo-fuzz > /dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

# Build first, so compile time is not counted in any target's time.
for target in "${TARGETS[@]}"; do
  nice -n "$NICE" cargo +nightly fuzz build "$target"
done

summary=()
failed=0
for target in "${TARGETS[@]}"; do
  mkdir -p "artifacts/$target" "corpus/$target"
  log="artifacts/$target/run.log"
  before=$(ls "artifacts/$target" | grep -E '^(crash|oom|timeout|leak)-' | sort || true)
  started=$(date +%s)
  echo "== $target: ${SECS}s" >&2
  # -jobs=1 runs the fuzzer in one child process whose output goes to
  # fuzz-0.log; it is moved to $log afterwards.
  rm -f fuzz-0.log
  status=0
  nice -n "$NICE" cargo +nightly fuzz run "$target" -- \
    -max_total_time="$SECS" -rss_limit_mb=2048 -max_len="$(max_len "$target")" \
    -jobs=1 -print_final_stats=1 $(extra "$target") > "$log.out" 2>&1 || status=$?
  { cat "$log.out"; [ -f fuzz-0.log ] && cat fuzz-0.log; } > "$log"
  rm -f "$log.out" fuzz-0.log
  elapsed=$(($(date +%s) - started))

  runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | tail -1 | grep -Eo '[0-9]+$' || true)
  [ -n "$runs" ] || runs=$(grep -Eo '^#[0-9]+' "$log" | tail -1 | tr -d '#' || true)
  cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true)
  corpus=$(ls "corpus/$target" | wc -l)
  after=$(ls "artifacts/$target" | grep -E '^(crash|oom|timeout|leak)-' | sort || true)
  new=$(comm -13 <(echo "$before") <(echo "$after") | grep . || true)
  if [ -n "$new" ] || grep -q 'ERROR: libFuzzer\|panicked at\|ERROR: AddressSanitizer' "$log"; then
    verdict="CRASH: $(echo "$new" | tr '\n' ' ')"
    failed=1
  elif [ "$status" -ne 0 ]; then
    verdict="exit $status (see $log)"
    failed=1
  else
    verdict="no crash"
  fi
  summary+=("$(printf '%-17s %5ss  runs %-10s %-22s corpus %-5s %s' \
    "$target" "$elapsed" "${runs:-?}" "${cov:-cov: ?}" "$corpus" "$verdict")")
done

echo
printf '%s\n' "${summary[@]}"
exit "$failed"
