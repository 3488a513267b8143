"""The simpler linear probe of the team's PyTorch baseline, on features written by `mae embed`:
BatchNorm1d(affine=False, eps=1e-6) + Linear (trunc-normal 0.01), AdamW, per-iteration cosine
(with optional linear warmup), cross-entropy, top-1 on val. Runs the same recipe as
`mae linprobe --features F --optimizer adamw`, so both probes can be compared on identical features.

  python probe_reference.py FEATURES.safetensors [--feature cls] [--epochs 30] [--blr 1e-3]
"""
import argparse, json, math
import torch, torch.nn as nn
from safetensors import safe_open


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("features"); ap.add_argument("--feature", default="cls")
    ap.add_argument("--epochs", type=int, default=30); ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--blr", type=float, default=1e-3); ap.add_argument("--warmup-epochs", type=float, default=0.0)
    ap.add_argument("--weight-decay", type=float, default=0.0); ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    with safe_open(a.features, "pt") as f:
        xt, yt = f.get_tensor(f"train.{a.feature}"), f.get_tensor("train.labels").long()
        xv, yv = f.get_tensor(f"val.{a.feature}"), f.get_tensor("val.labels").long()
        classes = int(f.metadata().get("num_classes", int(yt.max()) + 1))
    head = nn.Sequential(nn.BatchNorm1d(xt.shape[1], affine=False, eps=1e-6), nn.Linear(xt.shape[1], classes))
    nn.init.trunc_normal_(head[1].weight, std=0.01); nn.init.zeros_(head[1].bias)
    opt = torch.optim.AdamW([{"params": [head[1].weight], "weight_decay": a.weight_decay},
                             {"params": [head[1].bias], "weight_decay": 0.0}], lr=a.blr, betas=(0.9, 0.999))
    lr = a.blr * a.batch / 256
    steps = math.ceil(len(yt) / a.batch)
    for epoch in range(a.epochs):
        head.train()
        order = torch.randperm(len(yt))
        for i in range(steps):
            e = epoch + i / steps
            cur = lr * e / a.warmup_epochs if e < a.warmup_epochs else \
                lr * 0.5 * (1 + math.cos(math.pi * (e - a.warmup_epochs) / max(a.epochs - a.warmup_epochs, 1e-9)))
            for g in opt.param_groups:
                g["lr"] = cur
            idx = order[i * a.batch:(i + 1) * a.batch]
            loss = nn.functional.cross_entropy(head(xt[idx]), yt[idx])
            opt.zero_grad(); loss.backward(); opt.step()
    head.eval()
    with torch.no_grad():
        top1 = (head(xv).argmax(1) == yv).float().mean().item() * 100
    print(json.dumps({"top1": top1, "feature": a.feature, "epochs": a.epochs, "blr": a.blr}))


if __name__ == "__main__":
    main()
