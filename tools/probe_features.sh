#!/usr/bin/env bash
# Every probe of RESULTS.md on one features file written by `mae embed`, ours then PyTorch's
# (tools/reference/probe_reference.py, needs torch + safetensors), each timed.
#   tools/probe_features.sh FEATURES.safetensors
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
f=$1
mae=${MAE:-$root/target/release/mae}
t() { /usr/bin/time -f "%e s" "$@"; }
for feat in cls avg; do
  t "$mae" linprobe --features "$f" --feature $feat --optimizer adamw --blr 1e-3 --epochs 30 --warmup-epochs 0 --json
done
t "$mae" linprobe --features "$f" --feature cls --blr 10 --epochs 90 --warmup-epochs 10 --json
t "$mae" knn --features "$f" --json
t "$mae" knn --features "$f" --feature avg --json
for feat in cls avg; do
  t python3 "$root/tools/reference/probe_reference.py" "$f" --feature $feat --epochs 30 --blr 1e-3
done
