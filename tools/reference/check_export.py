"""By hand (not CI): what `mae export` writes, read by PyTorch itself. Needs torch and timm.

    mae export --checkpoint W --out full.pth
    mae export --checkpoint W --out enc.pth --encoder-only
    python3 tools/reference/check_export.py full.pth enc.pth --config parity [--source W.pth]

Checks that torch.load(weights_only=True) reads both, that the full file loads into the
reference MAE (tools/reference/torch_mae.py, the official models_mae.py layout) with
strict=True, that the encoder file is exactly the encoder's keys, and, with --source (a .pth of
the same weights), that every value is equal.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_mae as tm  # noqa: E402


def state_dict(path):
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(sd, dict) and key in sd:
            sd = sd[key]
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("full")
    ap.add_argument("encoder")
    ap.add_argument("--config", default="parity")
    ap.add_argument("--source")
    a = ap.parse_args()
    full, enc = state_dict(a.full), state_dict(a.encoder)
    model = tm.MAE(*tm.CONFIGS[a.config])
    print("full, strict load:", model.load_state_dict(full, strict=True))
    decoder = ("decoder", "mask_token")
    want = sorted(k for k in model.state_dict() if not k.startswith(decoder))
    assert sorted(enc) == want, (sorted(enc), want)
    print("encoder: the", len(enc), "encoder keys, nothing else")
    if a.source:
        src = state_dict(a.source)
        same = all(torch.equal(full[k], v.float()) for k, v in src.items())
        print("values equal to", a.source, ":", same)
        assert same


if __name__ == "__main__":
    main()
