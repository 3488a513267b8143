#!/usr/bin/env bash
# Runs the cargo-fuzz targets for SECONDS each (default 60), starting from the committed corpus
# (fuzz/corpus/TARGET, read only: new inputs go to a scratch folder), with AddressSanitizer and
# overflow checks. Exits non-zero when a target crashes; the input is then in
# fuzz/SET/artifacts/TARGET/ and belongs, once fixed, in fuzz/regressions/TARGET/ (the stable
# test mae-cli/tests/fuzz_corpus.rs runs every file there and in the corpus through the same
# code, fuzz/bodies/TARGET.rs).
#
#   bash tools/fuzz.sh [SECONDS]                 # or: cargo xtask fuzz [SECONDS]
#   FUZZ_SET=data bash tools/fuzz.sh 30          # data: dataset idx image tar (mae-data only)
#   FUZZ_SET=model bash tools/fuzz.sh 600        # model: weights checkpoint config pth
#   FUZZ_TARGETS="weights" FUZZ_SET=model bash tools/fuzz.sh 600
#   FUZZ_PROFILE=dev ...                         # unoptimized: builds in half the time, runs
#                                                # slower (CI's short run)
#
# Builds on 2 cores: fuzz/data (mae-data) 7.7 min (3.3 min with FUZZ_PROFILE=dev); fuzz/model
# (mae-core, mae-train) 14 to 25 min (mae-train's generic code under the sanitizer).
#
# Toolchain: cargo-fuzz needs -Z flags (sanitizers), but the installed nightly cannot compile
# dfdx 0.13 (E0310 in its conv modules), so the build uses the stable toolchain with
# RUSTC_BOOTSTRAP=1 (stable's rust-std ships the sanitizer runtimes). cargo-fuzz is installed
# when missing (from crates.io).
set -euo pipefail
secs=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
set_=${FUZZ_SET:-all}
profile=()
if [ "${FUZZ_PROFILE:-release}" = dev ]; then profile=(--dev); fi
case "$set_" in
  data) sets="data" ;;
  model) sets="model" ;;
  all) sets="data model" ;;
  *) echo "FUZZ_SET: data, model or all, not $set_" >&2; exit 2 ;;
esac
# the stable toolchain where rustup has one by that name, else the active one
tc=()
if rustup toolchain list 2>/dev/null | grep -q '^stable'; then tc=(+stable); fi
if ! cargo "${tc[@]}" fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo "${tc[@]}" install cargo-fuzz --locked --quiet
fi
export RUSTC_BOOTSTRAP=1
status=0
for s in $sets; do
  dir="$root/fuzz/$s"
  all=$(sed -n 's/^name = "\([a-z]*\)"$/\1/p' "$dir/Cargo.toml")
  targets=${FUZZ_TARGETS:-$all}
  start=$(date +%s)
  blog=$(mktemp)
  if ! cargo "${tc[@]}" fuzz build "${profile[@]}" --fuzz-dir "$dir" >"$blog" 2>&1; then
    grep -v -E "^\s+(Compiling|Checking|Downloaded|Downloading)" "$blog" | tail -n 60
    echo "fuzz/$s: build failed"
    exit 1
  fi
  rm -f "$blog"
  echo "fuzz/$s built in $(( $(date +%s) - start )) s"
  for t in $targets; do
    echo "$all" | grep -qx "$t" || continue
    work=$(mktemp -d)
    log=$(mktemp)
    # -rss_limit_mb: a reader that allocates for a size it read is a finding
    if (cargo "${tc[@]}" fuzz run "${profile[@]}" --fuzz-dir "$dir" "$t" "$work" "$root/fuzz/corpus/$t" -- \
        -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1) \
        >"$log" 2>&1; then
      runs=$(grep -o "stat::number_of_executed_units: *[0-9]*" "$log" | grep -o "[0-9]*$" || echo "?")
      echo "fuzz $t: ${secs} s, $runs executions, no crash"
    else
      status=1
      echo "fuzz $t: CRASH (input in fuzz/$s/artifacts/$t/)"
      tail -n 40 "$log"
    fi
    rm -rf "$work" "$log"
  done
done
exit $status
