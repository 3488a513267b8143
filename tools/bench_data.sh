#!/usr/bin/env bash
# The data benchmarks of BENCHMARKS.md ("Data at ImageNet scale"), side by side in one run:
#   - preparation images/s: `mae data prepare` (raw, jpeg) against a PIL process pool
#     (tools/reference/prepare_baseline.py) over the same photos, REPS alternating rounds;
#   - disk per image for each encoding;
#   - loader images/s at 224 (the pretraining transform): mae-data over raw, jpeg and png shards
#     against torchvision's ImageFolder DataLoader (2 workers) over the original JPEG files and
#     over the same images resized to 256 (what the JPEG shards hold).
# Needs numpy, PIL, torch, torchvision, scikit-image and matplotlib (pip; not for CI).
#   bash tools/bench_data.sh [WORK_DIR]        (COUNT=3000 REPS=3 WORKERS=2 BATCHES=40)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-${TMPDIR:-/tmp}/mae-bench-data}"
count="${COUNT:-3000}" reps="${REPS:-3}" workers="${WORKERS:-2}" batches="${BATCHES:-40}"
mkdir -p "$work"
cd "$root"
cargo build --release -q -p mae-cli
cargo build --release -q -p mae-data --example loader_throughput
mae="$root/target/release/mae"
grep -m1 "model name" /proc/cpuinfo
echo "cpu family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | tr -d ' '), model $(grep -m1 '^model\s' /proc/cpuinfo | cut -d: -f2 | tr -d ' '), $(nproc) cores"
python3 -c "import torch, torchvision, PIL; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'PIL', PIL.__version__)"
photos="$work/photos"
[ -d "$photos" ] || python3 tools/reference/make_photos.py "$photos" --count "$count"

# each timed command starts with nothing dirty in the page cache (the PIL pool does not fsync, and
# its unwritten output would otherwise be flushed during the next command's own syncs)
secs() { local t0 t1; sync; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }
median() { tr ' ' '\n' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "== prepare, $count photos, $reps rounds (ours and PIL alternating)"
for enc in raw jpeg; do
  ours="" pil=""
  for _ in $(seq "$reps"); do
    ours+=" $(secs "$mae" data prepare --from imagefolder "$photos" --out "$work/ds-$enc" --encoding "$enc" --force)"
    rm -rf "$work/pil-$enc"
    pil+=" $(secs python3 tools/reference/prepare_baseline.py "$photos" "$work/pil-$enc" --encoding "$enc" --workers "$workers")"
  done
  o=$(echo $ours | median) p=$(echo $pil | median)
  echo "prepare $enc: mae $(echo "$count / $o" | bc) img/s (${o}s), PIL pool $(echo "$count / $p" | bc) img/s (${p}s), ratio $(echo "scale=2; $p / $o" | bc)x   [mae:$ours | pil:$pil]"
done
"$mae" data prepare --from imagefolder "$photos" --out "$work/ds-png" --encoding png --force >/dev/null

echo "== disk per image"
for d in photos ds-raw ds-jpeg ds-png pil-jpeg; do
  b=$(du -sb "$work/$d" | cut -f1)
  echo "$d: $(( b / count / 1024 )) KiB/image ($(( b / 1048576 )) MiB)"
done

echo "== loader, 224 px, batch 64, $workers workers, $batches batches (files read once before: warm page cache)"
warm() { find "$1" -type f -exec cat {} + >/dev/null; }
for enc in raw jpeg png; do
  warm "$work/ds-$enc"
  target/release/examples/loader_throughput "$work/ds-$enc" --workers "$workers" --batches "$batches"
done
warm "$photos"
python3 tools/reference/loader_baseline.py "$photos" --workers "$workers" --batches "$batches"
warm "$work/pil-jpeg"
python3 tools/reference/loader_baseline.py "$work/pil-jpeg" --workers "$workers" --batches "$batches"
