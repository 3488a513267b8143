#!/usr/bin/env bash
# RandAugment (`rand-m9-mstd0.5-inc1`) images/s on 224-px photos, mae-rs against timm, one thread
# each, on the same pixels, side by side in one run (BENCHMARKS.md). Needs timm, PIL, numpy,
# scikit-image and matplotlib (pip; not for CI).
#   bash tools/bench_randaugment.sh [WORK_DIR]      (COUNT=256 ROUNDS=4 REPS=3)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-${TMPDIR:-/tmp}/mae-bench-ra}"
count="${COUNT:-256}" rounds="${ROUNDS:-4}" reps="${REPS:-3}"
mkdir -p "$work"
cd "$root"
cargo build --release -q -p mae-data --example randaugment_throughput
grep -m1 "model name" /proc/cpuinfo
echo "cpu family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | tr -d ' '), model $(grep -m1 '^model\s' /proc/cpuinfo | cut -d: -f2 | tr -d ' '), stepping $(grep -m1 'stepping' /proc/cpuinfo | cut -d: -f2 | tr -d ' '), $(nproc) cores"
python3 -c "import timm, PIL; print('timm', timm.__version__, 'PIL', PIL.__version__)"
photos="$work/photos"
[ -d "$photos" ] || python3 tools/reference/make_photos.py "$photos" --count "$count" >/dev/null
for _ in $(seq "$reps"); do
  python3 tools/reference/randaugment_bench.py "$photos" "$work/images.raw" --count "$count" --rounds "$rounds"
  target/release/examples/randaugment_throughput "$work/images.raw" --rounds "$rounds"
done
