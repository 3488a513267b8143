#!/usr/bin/env bash
# Reproduces RESULTS.md: the full Fashion-MNIST (60,000 train / 10,000 test) evaluation table for
# the `tiny` preset. Needs `apt-get install dataset-fashion-mnist`. Each step is skipped when its
# output exists, so the script can be stopped and rerun (pretraining resumes with --resume auto).
#   tools/results_fmnist.sh [ROWS...]      ROWS: random mae5 mae-long (default: all)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release -p mae-cli
mae=target/release/mae
src=${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
data=${DATA:-runs/fmnist-full}
out=${OUT:-runs/results}
long_epochs=${LONG_EPOCHS:-20}
ft_epochs=${FT_EPOCHS:-1}
mkdir -p "$out"
[ -f "$data/manifest.json" ] || $mae data prepare --from idx "$src" --class-names data/fashion-mnist/classes.txt --out "$data"

pretrain() { # name epochs
  $mae pretrain --data "$data" --preset tiny --out "$out/$1" --epochs "$2" --batch-size 256 --blr 1e-3 \
    --warmup-epochs 1 --norm-pix-loss --mask-ratio 0.75 --seed 0 --save-every 200 --keep-last 2 \
    --log-every 50 --resume auto
}

evaluate() { # name checkpoint-or-empty
  local name=$1 ckpt=$2 feats="$out/$1.features.safetensors"
  [ -f "$feats" ] || $mae embed --checkpoint "$ckpt" --data "$data" --out "$feats"
  # the team's simpler probe (AdamW, 30 epochs; ours and PyTorch's), the official LARS probe, kNN
  MAE=$mae tools/probe_features.sh "$feats"
  local ft=(--epochs "$ft_epochs" --batch-size 128 --blr 1e-3 --warmup-epochs 0.1 --min-crop-scale 0.35
            --mixup 0 --cutmix 0 --save-every 100 --resume auto --json)
  if [ "$name" = random ]; then
    $mae finetune --from-scratch --preset tiny --data "$data" --out "$out/ft-$name" "${ft[@]}"
  else
    $mae finetune --checkpoint "$ckpt" --data "$data" --out "$out/ft-$name" "${ft[@]}"
  fi
}

last_checkpoint() { ls "$out/$1"/checkpoint-*.safetensors | grep -v state | sort -t- -k2 -n | tail -1; }

rows=("$@"); [ ${#rows[@]} -gt 0 ] || rows=(random mae5 mae-long)
for row in "${rows[@]}"; do
  start=$SECONDS
  case $row in
    random) [ -f "$out/random.safetensors" ] || $mae init --preset tiny --seed 0 --out "$out/random.safetensors"
            evaluate random "$out/random.safetensors" ;;
    mae5) pretrain mae5 5; evaluate mae5 "$(last_checkpoint mae5)" ;;
    mae-long) pretrain mae-long "$long_epochs"; evaluate mae-long "$(last_checkpoint mae-long)" ;;
    *) echo "unknown row $row (random, mae5, mae-long)"; exit 2 ;;
  esac
  echo "$row: $((SECONDS - start)) s"
done
