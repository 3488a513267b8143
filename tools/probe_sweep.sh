#!/usr/bin/env bash
# The linear-probe settings sweep behind `mae linprobe`'s defaults (RESULTS.md, "Choosing the probe
# defaults"): the features of CHECKPOINT over DATA are written once (`mae embed`), then each
# setting trains a probe on them (cls token, batch 256 unless said) and prints its top-1.
#   tools/probe_sweep.sh CHECKPOINT DATA [WORK_DIR]     (EPOCHS="10 90"; MAE=target/release/mae)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ckpt=$1 data=$2 work=${3:-${TMPDIR:-/tmp}/mae-probe-sweep}
mae=${MAE:-$root/target/release/mae}
mkdir -p "$work"
feats="$work/$(basename "$ckpt" .safetensors).features.safetensors"
[ -f "$feats" ] || "$mae" embed --checkpoint "$ckpt" --data "$data" --out "$feats" >/dev/null
probe() {
  local top1
  top1=$("$mae" linprobe --features "$feats" --force --json "$@" | python3 -c 'import json,sys; print(json.load(sys.stdin)["top1"])')
  echo "$top1  $*"
}
for epochs in ${EPOCHS:-10 90}; do
  for blr in 0.1 1 3 6.4 10 20 40 80; do probe --epochs "$epochs" --optimizer lars --blr "$blr"; done
  for blr in 1e-4 3e-4 1e-3 3e-3 1e-2 3e-2 0.1 0.3; do probe --epochs "$epochs" --optimizer adamw --blr "$blr"; done
  probe --epochs "$epochs"   # the defaults (AdamW, blr 0.1, warmup epochs/9)
done
# the official recipe's batch (16,384, lr 6.4): in one batch, and as LINPROBE.md's 512 per GPU on
# 32 GPUs (--accum-iter 32: BatchNorm statistics per 512, as each GPU has them)
probe --epochs 90 --optimizer lars --blr 0.1 --batch-size 16384
probe --epochs 90 --optimizer lars --blr 0.1 --batch-size 512 --accum-iter 32 --warmup-epochs 10
