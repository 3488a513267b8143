"""By hand (not CI): a classifier that went through `mae import` and `mae export`, read back by
PyTorch and run by timm. Needs torch, timm, safetensors and a built `mae`.

    MAE=target/release/mae python3 tools/reference/check_classifier_export.py

For both classifier fixtures (mae-core/tests/fixtures/pth/finetuned.pth: models_vit.py's
global-pool head; timm_vit.pth: timm's cls-token ViT) it runs `mae import` then `mae export
--format pth`, loads the result with torch.load(weights_only=True) into the matching timm
VisionTransformer (global_pool='avg' with fc_norm, as models_vit.py, or 'token') with
strict=True, and compares its logits on the fixture's input with the fixture's (those of the
model that wrote the weights; mae-core's tests hold ours to the same within 1e-4).
"""

import os
import subprocess
import sys
import tempfile
from functools import partial

import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.join(here, "..", "..")
sys.path.insert(0, here)
from check_export import state_dict  # noqa: E402
from torch_mae import CONFIGS  # noqa: E402

CASES = [("finetuned.pth", "vit-parity-a.safetensors", "avg"),
         ("timm_vit.pth", "vit-parity-token.safetensors", "token")]


def main():
    mae = os.environ.get("MAE", os.path.join(root, "target/release/mae"))
    img, p, c, d, depth, h = CONFIGS["parity"][:6]
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for pth, fixture, pool in CASES:
            src = os.path.join(root, "mae-core/tests/fixtures/pth", pth)
            imported = os.path.join(tmp, pth + ".safetensors")
            exported = os.path.join(tmp, pth + ".export.pth")
            subprocess.run([mae, "import", "--from", src, "--out", imported], check=True)
            subprocess.run([mae, "export", "--checkpoint", imported, "--out", exported], check=True)
            fx = load_file(os.path.join(root, "mae-core/tests/fixtures/vit", fixture))
            classes = fx["model.head.bias"].shape[0]
            model = VisionTransformer(img_size=img, patch_size=p, in_chans=c, num_classes=classes,
                                      embed_dim=d, depth=depth, num_heads=h, qkv_bias=True,
                                      global_pool=pool, fc_norm=(pool == "avg"),
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)).eval()
            print(pth, "strict load:", model.load_state_dict(state_dict(exported), strict=True))
            with torch.no_grad():
                logits = model(fx["input"])
            ref = fx["logits"]
            rel = ((logits - ref).norm() / ref.norm()).item()
            worst = max(worst, rel)
            print(f"{pth}: logits relative difference {rel:.3e} (global_pool={pool!r})")
    assert worst < 1e-5, worst
    print(f"ok: worst {worst:.3e}")


if __name__ == "__main__":
    main()
