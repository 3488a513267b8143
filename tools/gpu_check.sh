#!/usr/bin/env bash
# The GPU checks of the CUDA issue (#7), in one call of a few minutes, on a machine with an NVIDIA
# GPU, PyTorch with its CUDA 13 wheels, and no Rust: it runs what `cargo xtask gpu-build` left in
# target/gpu-carry (carry that folder to the GPU machine with the working tree).
#
#  1. the card (nvidia-smi);
#  2. the parity tests on the GPU (mae-core's fixtures, ≤ 1e-4 in f32, no TF32);
#  3. one training step on the GPU against the same step on the CPU (mae-train's gpu_step, f32
#     and amp-f16), and 60 steps of `mae pretrain --device cuda` on the bundled data (f32, then
#     amp-f16 against it), the kNN of the result on the GPU against the CPU, and 40 steps of
#     `mae finetune --device cuda` from it (f32 and amp-f16);
#  4. `mae bench --device cuda` (f32 and amp-f16) for tiny b256, vit-b16 b64, vit-l16 b32, side by
#     side with PyTorch eager f32 and fp16 autocast on the same card
#     (tools/reference/torch_mae.py bench).
#
# Results go to $OUT (default target/gpu-check): one JSON line per bench in bench.jsonl, the
# tests' output in *.log. Every step runs even when an earlier one failed; the exit status says
# whether all passed. Environment: GPU_CARRY (target/gpu-carry), OUT, STEPS (bench steps, 5),
# BENCHES (preset:batch list, "tiny:256 vit-b16:64 vit-l16:32"), PRETRAIN_STEPS (60) and
# PRETRAIN_BATCH (256) of the two pretraining runs, FINETUNE_STEPS (40), PYTHON (python3).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
carry="${GPU_CARRY:-$root/target/gpu-carry}"
out="${OUT:-$root/target/gpu-check}"
steps="${STEPS:-5}"
mkdir -p "$out"
failed=0
say() { echo "gpu-check: $*"; }
fail() { say "FAILED: $*"; failed=1; }

# gpu-build leaves the binaries gzipped (bin/*.gz): unpack them next to the results
bin="$carry/bin"
if [ -f "$bin/mae.gz" ]; then
  bin="${TMPDIR:-/tmp}/mae-gpu-bin"
  mkdir -p "$bin"
  for f in "$carry"/bin/*.gz; do
    name="$(basename "$f" .gz)"
    gzip -dc "$f" >"$bin/$name" && chmod +x "$bin/$name" || { say "cannot unpack $f"; exit 2; }
  done
fi
[ -x "$bin/mae" ] || { say "no $carry/bin/mae(.gz): run cargo xtask gpu-build first"; exit 2; }
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv | tee "$out/gpu.txt"

# The binaries link libcublas, libcublasLt and libnvrtc (CUDA 13), which PyTorch's wheels carry,
# and the driver's libcuda.
python="${PYTHON:-python3}"
libdirs="$("$python" - <<'EOF'
import glob, os, site, sys
dirs = set()
for base in site.getsitepackages() + [site.getusersitepackages()]:
    for lib in glob.glob(os.path.join(base, "nvidia", "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(lib))
print(":".join(sorted(dirs)))
EOF
)"
export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# dfdx compiles a few kernels at run time with NVRTC, with include paths fixed when it was built
# (the CUDA headers and its own cuda_utils.cuh): put the carried copies at those paths.
if [ -f "$carry/include-paths" ]; then
  headers="${TMPDIR:-/tmp}/mae-gpu-include"
  mkdir -p "$headers" && tar -xzf "$carry/include.tar.gz" -C "$headers"
  while IFS=' ' read -r baked carried; do
    [ -e "$baked" ] && continue
    mkdir -p "$(dirname "$baked")"
    ln -s "$headers/$carried" "$baked" || fail "cannot recreate $baked"
  done <"$carry/include-paths"
fi

say "parity on the GPU"
MAE_FIXTURES_DIR="$root/mae-core/tests/fixtures" "$bin/test-parity" --nocapture \
  >"$out/parity.log" 2>&1 || fail "parity (see $out/parity.log)"
tail -n 5 "$out/parity.log"

say "one training step, GPU against CPU"
"$bin/test-gpu_step" --nocapture >"$out/gpu_step.log" 2>&1 ||
  fail "gpu_step (see $out/gpu_step.log)"
tail -n 3 "$out/gpu_step.log"

pretrain_steps="${PRETRAIN_STEPS:-60}" pretrain_batch="${PRETRAIN_BATCH:-256}"
say "pretraining on the GPU: tiny, $pretrain_steps steps on the bundled Fashion-MNIST"
data="${TMPDIR:-/tmp}/mae-gpu-fmnist"
if "$bin/mae" data prepare --from idx "$root/data/fashion-mnist" --out "$data" --force \
    >/dev/null 2>"$out/prepare.err"; then
  "$bin/mae" pretrain --device cuda --data "$data" --preset tiny --out "$out/pretrain" \
    --batch-size "$pretrain_batch" --max-steps "$pretrain_steps" --log-every 10 --warmup-epochs 1 \
    --blr 1e-3 --norm-pix-loss >"$out/pretrain.log" 2>&1 || fail "pretrain on cuda (see $out/pretrain.log)"
  tail -n 4 "$out/pretrain.log"
  say "the same steps in mixed precision (--precision amp-f16): the last loss within 5% of f32's"
  "$bin/mae" pretrain --device cuda --precision amp-f16 --data "$data" --preset tiny \
    --out "$out/pretrain-amp" --batch-size "$pretrain_batch" --max-steps "$pretrain_steps" \
    --log-every 10 --warmup-epochs 1 --blr 1e-3 --norm-pix-loss >"$out/pretrain-amp.log" 2>&1 ||
    fail "pretrain amp-f16 on cuda (see $out/pretrain-amp.log)"
  tail -n 3 "$out/pretrain-amp.log"
  "$python" - "$out/pretrain/metrics.jsonl" "$out/pretrain-amp/metrics.jsonl" <<'EOF2' ||
import json, sys
last = [json.loads(open(p).read().splitlines()[-1])["loss"] for p in sys.argv[1:3]]
print(f"last loss f32 {last[0]:.4f} amp-f16 {last[1]:.4f}")
sys.exit(0 if abs(last[1] - last[0]) <= 0.05 * last[0] else 1)
EOF2
    fail "amp-f16 pretraining does not follow f32's"
  ckpt="$(ls "$out"/pretrain/checkpoint-*.safetensors 2>/dev/null | grep -v state | tail -n 1)"
  if [ -n "$ckpt" ]; then
    say "kNN of that encoder on the GPU and on the CPU (same top-1 up to ties)"
    for d in cuda cpu; do
      "$bin/mae" knn --device "$d" --checkpoint "$ckpt" --data "$data" --json \
        >"$out/knn-$d.json" 2>>"$out/knn.err" || fail "knn on $d (see $out/knn.err)"
    done
    "$python" - "$out/knn-cuda.json" "$out/knn-cpu.json" <<'EOF2' || fail "kNN differs between cuda and cpu"
import json, sys
gpu, cpu = (json.load(open(p)) for p in sys.argv[1:3])
print(f"kNN top-1 cuda {gpu['top1']:.2f}% cpu {cpu['top1']:.2f}%")
sys.exit(0 if abs(gpu["top1"] - cpu["top1"]) <= 0.2 else 1)
EOF2
    say "kNN with the encoder in half precision (--precision amp-f16): top-1 within 1 point of f32's"
    "$bin/mae" knn --device cuda --precision amp-f16 --checkpoint "$ckpt" --data "$data" --json \
      >"$out/knn-cuda-amp.json" 2>>"$out/knn.err" || fail "knn amp-f16 on cuda (see $out/knn.err)"
    "$python" - "$out/knn-cuda-amp.json" "$out/knn-cuda.json" <<'EOF2' || fail "kNN in amp-f16 is off"
import json, sys
half, full = (json.load(open(p)) for p in sys.argv[1:3])
print(f"kNN top-1 amp-f16 {half['top1']:.2f}% f32 {full['top1']:.2f}%")
sys.exit(0 if abs(half["top1"] - full["top1"]) <= 1.0 else 1)
EOF2
    finetune_steps="${FINETUNE_STEPS:-40}"
    for precision in f32 amp-f16; do
      say "fine-tuning on the GPU ($precision): $finetune_steps steps from that checkpoint"
      "$bin/mae" finetune --device cuda --precision "$precision" --checkpoint "$ckpt" \
        --data "$data" --out "$out/finetune-$precision" --batch-size 64 \
        --max-steps "$finetune_steps" --log-every 10 --warmup-epochs 0.2 \
        >"$out/finetune-$precision.log" 2>&1 ||
        fail "finetune $precision on cuda (see $out/finetune-$precision.log)"
      tail -n 3 "$out/finetune-$precision.log"
    done
  else
    fail "pretrain on cuda left no checkpoint"
  fi
else
  fail "data prepare (see $out/prepare.err)"
fi

say "bench: ours (f32, amp-f16) and PyTorch (eager f32, fp16 autocast) on the same card"
: >"$out/bench.jsonl"
for pb in ${BENCHES:-tiny:256 vit-b16:64 vit-l16:32}; do
  preset="${pb%%:*}" batch="${pb##*:}"
  for precision in f32 amp-f16; do
    "$bin/mae" bench --device cuda --precision "$precision" --preset "$preset" \
      --batch-size "$batch" --steps "$steps" --json >>"$out/bench.jsonl" 2>>"$out/bench.err" ||
      fail "mae bench $preset $batch $precision"
  done
  for amp in "" "--amp"; do
    "$python" "$root/tools/reference/torch_mae.py" bench --device cuda $amp --config "$preset" \
      --batch "$batch" --steps "$steps" >>"$out/bench.jsonl" 2>>"$out/bench.err" ||
      fail "torch bench $preset $batch $amp"
  done
done
cat "$out/bench.jsonl"
[ "$failed" = 0 ] && say "all passed" || say "some checks failed"
exit "$failed"
