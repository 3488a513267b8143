"""main_finetune.py's recipe in PyTorch for one comparison run: the global-pool ViT of
torch_vit.py (timm Blocks with drop path), started from an MAE checkpoint in safetensors (official
names), AdamW(0.9, 0.999) over util/lr_decay.param_groups_lrd, per-iteration warmup + cosine with
lr_scale per group, RandomResizedCrop + flip + RandomErasing(value='random'), label-smoothing
cross-entropy (mixup/cutmix off), top-1 on the Fashion-MNIST test set after the last epoch.

  python finetune_reference.py CKPT.safetensors --epochs 1 --batch 128 --blr 1e-3 --warmup-epochs 0.1 \
      --min-crop-scale 0.35
"""
import argparse, gzip, json, math, os, time
import numpy as np
import torch, torch.nn as nn, torch.nn.functional as F
import torchvision.transforms as T
from safetensors.torch import load_file
from timm.models.vision_transformer import Block
from torch_mae import CONFIGS


def read_idx(path, images=True):
    with gzip.open(path, "rb") as f:
        data = f.read()
    if images:
        n, h, w = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
        return np.frombuffer(data, np.uint8, offset=16).reshape(n, h, w)
    return np.frombuffer(data, np.uint8, offset=8).astype(np.int64)


class ViT(nn.Module):
    def __init__(self, img, p, c, d, depth, h, classes, drop_path):
        super().__init__()
        g = img // p
        self.patch_embed = nn.Module(); self.patch_embed.proj = nn.Conv2d(c, d, p, p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, g * g + 1, d))
        ln = lambda n, **kw: nn.LayerNorm(n, eps=1e-6, **kw)
        dpr = [x.item() for x in torch.linspace(0, drop_path, depth)]
        self.blocks = nn.ModuleList([Block(d, h, 4.0, qkv_bias=True, norm_layer=ln, drop_path=dpr[i]) for i in range(depth)])
        self.fc_norm = ln(d)
        self.head = nn.Linear(d, classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5); nn.init.zeros_(self.head.bias)

    def forward(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:, :]
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1)
        for b in self.blocks:
            x = b(x)
        return self.head(self.fc_norm(x[:, 1:, :].mean(dim=1)))


def layer_id(name, num_layers):
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint"); ap.add_argument("--idx", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--config", default="tiny"); ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128); ap.add_argument("--blr", type=float, default=1e-3)
    ap.add_argument("--warmup-epochs", type=float, default=0.1); ap.add_argument("--min-crop-scale", type=float, default=0.35)
    ap.add_argument("--layer-decay", type=float, default=0.75); ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--drop-path", type=float, default=0.1); ap.add_argument("--smoothing", type=float, default=0.1)
    ap.add_argument("--reprob", type=float, default=0.25); ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    xt = read_idx(os.path.join(a.idx, "train-images-idx3-ubyte.gz"))
    yt = read_idx(os.path.join(a.idx, "train-labels-idx1-ubyte.gz"), False)
    xv = read_idx(os.path.join(a.idx, "t10k-images-idx3-ubyte.gz"))
    yv = read_idx(os.path.join(a.idx, "t10k-labels-idx1-ubyte.gz"), False)
    mean, std = xt.mean() / 255.0, xt.std() / 255.0
    train_tf = T.Compose([T.ToPILImage(), T.RandomResizedCrop(28, scale=(a.min_crop_scale, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                          T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize([mean], [std]),
                          T.RandomErasing(p=a.reprob, value="random")])

    class DS(torch.utils.data.Dataset):
        def __len__(self): return len(xt)
        def __getitem__(self, i): return train_tf(xt[i]), yt[i]

    loader = torch.utils.data.DataLoader(DS(), batch_size=a.batch, shuffle=True, drop_last=True, num_workers=2)
    img, p, c, d, depth, h = CONFIGS[a.config][:6]
    model = ViT(img, p, c, d, depth, h, 10, a.drop_path)
    state = {k: v for k, v in load_file(a.checkpoint).items() if not k.startswith(("decoder", "mask_token", "norm."))}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert set(missing) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}, missing
    groups = {}
    for n, prm in model.named_parameters():
        decay = not (prm.ndim == 1 or n in ("pos_embed", "cls_token"))
        lid = layer_id(n, depth + 1)
        key = (lid, decay)
        groups.setdefault(key, {"params": [], "weight_decay": a.weight_decay if decay else 0.0,
                                "lr_scale": a.layer_decay ** (depth + 1 - lid)})["params"].append(prm)
    opt = torch.optim.AdamW(list(groups.values()), lr=a.blr, betas=(0.9, 0.999))
    lr = a.blr * a.batch / 256
    steps, start = len(loader), time.time()
    model.train()
    for epoch in range(a.epochs):
        for i, (x, y) in enumerate(loader):
            e = epoch + i / steps
            cur = lr * e / a.warmup_epochs if e < a.warmup_epochs else \
                1e-6 + (lr - 1e-6) * 0.5 * (1 + math.cos(math.pi * (e - a.warmup_epochs) / (a.epochs - a.warmup_epochs)))
            for g in opt.param_groups:
                g["lr"] = cur * g["lr_scale"]
            loss = F.cross_entropy(model(x), y, label_smoothing=a.smoothing)
            opt.zero_grad(); loss.backward(); opt.step()
            if i % 50 == 0:
                print(json.dumps({"epoch": round(e, 3), "loss": loss.item(), "elapsed_s": round(time.time() - start, 1)}), flush=True)
    model.eval()
    with torch.no_grad():
        xs = (torch.from_numpy(xv).float().unsqueeze(1) / 255.0 - mean) / std
        pred = torch.cat([model(xs[i:i + 1000]).argmax(1) for i in range(0, len(xs), 1000)])
    top1 = (pred == torch.from_numpy(yv)).float().mean().item() * 100
    print(json.dumps({"top1": top1, "elapsed_s": round(time.time() - start, 1)}))


if __name__ == "__main__":
    main()
