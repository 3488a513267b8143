"""By hand (not CI): what `mae export --format hf` writes, loaded by Hugging Face transformers,
against the official-layout reference MAE (tools/reference/torch_mae.py) holding the same weights
from `mae export --format pth`: the same loss, predictions and mask on the same images and noise.
Needs torch, timm and transformers.

    mae export --checkpoint W --format hf --out hf/
    mae export --checkpoint W --format hf --out hf-enc/ --encoder-only
    mae export --checkpoint W --out w.pth
    python3 tools/reference/check_hf_export.py hf/ w.pth --config parity [--encoder hf-enc/]
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_mae as tm  # noqa: E402
from check_export import state_dict  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("hf")
    ap.add_argument("pth")
    ap.add_argument("--config", default="parity")
    ap.add_argument("--encoder")
    a = ap.parse_args()
    from transformers import ViTMAEForPreTraining, ViTModel

    hf, info = ViTMAEForPreTraining.from_pretrained(a.hf, output_loading_info=True)
    print("from_pretrained:", {k: v for k, v in info.items() if v})
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    hf.eval()
    ref = tm.MAE(*tm.CONFIGS[a.config])
    ref.load_state_dict(state_dict(a.pth), strict=True)
    ref.eval()
    img, p, c = tm.CONFIGS[a.config][:3]
    g = torch.Generator().manual_seed(0)
    imgs = torch.randn(3, c, img, img, generator=g)
    noise = torch.rand(3, (img // p) ** 2, generator=g)
    with torch.no_grad():
        out = hf(pixel_values=imgs, noise=noise)
        loss, pred, mask, _, latent = ref(imgs, noise, hf.config.mask_ratio)
    for name, x, y in [("loss", out.loss, loss), ("pred", out.logits, pred), ("mask", out.mask, mask)]:
        diff = (x - y).abs().max().item()
        print(f"{name}: max |hf - reference| = {diff:.3e}")
        assert diff < 1e-4, name
    if a.encoder:
        enc, info = ViTModel.from_pretrained(a.encoder, add_pooling_layer=False, output_loading_info=True)
        print("ViTModel from_pretrained:", {k: v for k, v in info.items() if v})
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        enc.eval()
        with torch.no_grad():
            h = enc(pixel_values=imgs).last_hidden_state
            x = ref.patch_embed.proj(imgs).flatten(2).transpose(1, 2) + ref.pos_embed[:, 1:, :]
            cls = (ref.cls_token + ref.pos_embed[:, :1, :]).expand(3, -1, -1)
            x = torch.cat((cls, x), dim=1)
            for b in ref.blocks:
                x = b(x)
            x = ref.norm(x)
        diff = (h - x).abs().max().item()
        print(f"encoder (all patches): max |ViTModel - reference| = {diff:.3e}")
        assert diff < 1e-4


if __name__ == "__main__":
    main()
