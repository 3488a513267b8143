"""The `.pth` fixtures of mae-core/tests/pth.rs, written by torch.save itself (pip install torch
safetensors numpy; not for CI). The weights are those of mae-parity-a.safetensors (the parity
preset's `model.*` tensors), so the test can require the imported values to equal them bit for
bit (or exactly as converted from f16/bf16).

    python3 tools/reference/pth_fixtures.py [OUT_DIR]   (default mae-core/tests/fixtures/pth)

Files:
  full.pth            {'model': state_dict} of the whole MAE (main_pretrain.py's layout)
  encoder.pth         {'model': encoder-only state_dict} (the released mae_pretrain_vit_*.pth)
  ddp_f16.pth         {'state_dict': {'module.' + name: f16}} (a DDP-wrapped, half-precision save)
  views.pth           an OrderedDict of a bf16, an f64, a transposed (non-contiguous) and an
                      offset view into a shared storage, plus an int64 and a 0-d tensor
  legacy.pth          views.pth in the pre-1.6 format (_use_new_zipfile_serialization=False)
  checkpoint.pth      what main_pretrain.py saves: model, optimizer state, epoch, scaler, args
                      (an argparse.Namespace)
  os_system.pth       a torch.save'd object whose unpickling would call os.system: refused
  short_storage.pth   full.pth with one storage cut short of what its tensor's view needs
  expanded.pth        a stride-0 view declaring 2**40 elements over a storage of one
  empty.pth           an empty dict
  finetuned.pth       {'model': classifier state_dict} with the global-pool head (fc_norm, head), as
                      the released mae_finetuned_vit_*.pth: the weights of
                      tests/fixtures/vit/vit-parity-a.safetensors
  timm_vit.pth        a bare state_dict of timm's VisionTransformer(global_pool='token') (norm,
                      head), as timm's pytorch_model.bin: tests/fixtures/vit/vit-parity-token
"""

import argparse
import collections
import io
import os
import sys
import zipfile

import torch
from safetensors.torch import load_file

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.join(here, "..", "..")


class Hostile:
    def __reduce__(self):
        return (os.system, ("echo this pickle ran a command",))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default=os.path.join(root, "mae-core/tests/fixtures/pth"))
    out = ap.parse_args().out
    os.makedirs(out, exist_ok=True)
    src = load_file(os.path.join(root, "mae-core/tests/fixtures/mae-parity-a.safetensors"))
    sd = collections.OrderedDict(
        (k[len("model."):], v) for k, v in sorted(src.items()) if k.startswith("model."))
    p = lambda name: os.path.join(out, name)
    torch.save({"model": sd}, p("full.pth"))
    enc = collections.OrderedDict((k, v) for k, v in sd.items() if not k.startswith(("decoder", "mask_token")))
    torch.save({"model": enc}, p("encoder.pth"))
    ddp = collections.OrderedDict(("module." + k, v.half()) for k, v in sd.items())
    torch.save({"state_dict": ddp, "epoch": 3}, p("ddp_f16.pth"))

    base = torch.arange(24, dtype=torch.float32) / 7.0
    views = collections.OrderedDict()
    views["bf16"] = (torch.arange(12, dtype=torch.float32) / 3.0 - 2.0).to(torch.bfloat16).reshape(3, 4)
    views["f64"] = torch.arange(6, dtype=torch.float64).reshape(2, 3) / 9.0
    views["transposed"] = base[:12].reshape(3, 4).t()           # shape (4, 3), strides (1, 4)
    views["offset"] = base[5:17].reshape(2, 6)                  # storage offset 5, shared storage
    views["int64"] = torch.arange(5, dtype=torch.int64) - 2
    views["scalar"] = torch.tensor(2.5)
    torch.save(views, p("views.pth"))
    torch.save(views, p("legacy.pth"), _use_new_zipfile_serialization=False)

    opt_state = {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(3)}},
                 "param_groups": [{"lr": 1e-3, "weight_decay": 0.05, "params": [0]}]}
    args = argparse.Namespace(model="mae_vit_parity", mask_ratio=0.75, norm_pix_loss=True)
    torch.save({"model": sd, "optimizer": opt_state, "epoch": 7, "scaler": {"scale": 65536.0},
                "args": args}, p("checkpoint.pth"))

    torch.save({"model": Hostile()}, p("os_system.pth"))

    # one storage cut short: rewrite full.pth's zip with the first storage's bytes halved
    with zipfile.ZipFile(p("full.pth")) as z:
        entries = [(i, z.read(i.filename)) for i in z.infolist()]
    with zipfile.ZipFile(p("short_storage.pth"), "w", zipfile.ZIP_STORED) as z:
        cut = False
        for info, data in entries:
            if not cut and "/data/" in info.filename and len(data) > 64:
                data, cut = data[: len(data) // 2], True
            z.writestr(info.filename, data)

    torch.save({"big": torch.ones(1).expand(2 ** 40)}, p("expanded.pth"))
    torch.save({}, p("empty.pth"))

    def classifier(name):
        t = load_file(os.path.join(root, "mae-core/tests/fixtures/vit", name))
        return collections.OrderedDict(
            (k[len("model."):], v) for k, v in sorted(t.items()) if k.startswith("model."))
    torch.save({"model": classifier("vit-parity-a.safetensors")}, p("finetuned.pth"))
    torch.save(classifier("vit-parity-token.safetensors"), p("timm_vit.pth"))
    print("wrote", sorted(os.listdir(out)), "with torch", torch.__version__, file=sys.stderr)


if __name__ == "__main__":
    main()
