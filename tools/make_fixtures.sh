#!/usr/bin/env bash
# Regenerates the parity fixtures in mae-core/tests/fixtures with the PyTorch reference.
# Needs: pip install torch timm safetensors numpy
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ref="$root/tools/reference/torch_mae.py"
out="$root/mae-core/tests/fixtures"
python "$ref" fixture "$out/mae-parity-a.safetensors" --seed 1 --config parity
python "$ref" fixture "$out/mae-parity-b.safetensors" --seed 5 --batch 4 --mask-ratio 0.6 --config parity
python "$ref" fixture "$out/mae-parity-c.safetensors" --seed 9 --batch 2 --mask-ratio 0.9 --config parity
python "$ref" fixture "$out/mae-tiny-a.safetensors" --seed 9 --batch 2 --mask-ratio 0.6 --config tiny --no-grads
# ViT-S/16 is too large to store: weights and inputs from a formula both sides compute
python "$ref" fixture "$out/mae-vit-s16-formula.safetensors" --batch 2 --config vit-s16 --formula
# the fine-tuning classifier: models_vit.py's global-pool head, and timm's cls-token ViT
vit="$root/tools/reference/torch_vit.py"
(cd "$root/tools/reference" && python "$vit" "$out/vit/vit-parity-a.safetensors" --seed 2 \
  && python "$vit" "$out/vit/vit-parity-token.safetensors" --seed 3 --pool token)
# the .pth fixtures hold mae-parity-a's and the classifiers' weights: made after them
python "$root/tools/reference/pth_fixtures.py" "$out/pth"
# RandAugment's ops against timm's (needs scikit-image for the photo)
python "$root/tools/reference/randaugment_fixture.py"
