"""The official pretraining recipe (main_pretrain.py + engine_pretrain.py) in PyTorch with the
reference MAE of torch_mae.py, on Fashion-MNIST idx files: RandomResizedCrop(scale 0.2-1,
bicubic) + horizontal flip + normalize (the data's mean/std), AdamW(0.9, 0.95) with timm's
weight-decay groups, per-iteration warmup + half-cycle cosine, lr = blr * batch / 256. Writes the
model under the official names as safetensors (with `preset` metadata), so that mae-rs's own
`mae embed` / `mae linprobe` / `mae knn` / `mae finetune` evaluate it exactly as they evaluate ours.

  python pretrain_reference.py OUT.safetensors --idx /usr/share/datasets/fashion-mnist \
      --epochs 5 --batch 256 --blr 1e-3 --warmup-epochs 1 --norm-pix-loss --seed 0
"""
import argparse, gzip, json, math, os, time
import numpy as np
import torch, torch.nn as nn
import torchvision.transforms as T
from safetensors.torch import save_file
from torch_mae import CONFIGS, MAE


def read_idx_images(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    n, h, w = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(data, np.uint8, offset=16).reshape(n, h, w)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out"); ap.add_argument("--idx", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--config", default="tiny"); ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256); ap.add_argument("--blr", type=float, default=1e-3)
    ap.add_argument("--warmup-epochs", type=float, default=1.0); ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--mask-ratio", type=float, default=0.75); ap.add_argument("--norm-pix-loss", action="store_true")
    ap.add_argument("--seed", type=int, default=0); ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    torch.manual_seed(a.seed); np.random.seed(a.seed)
    imgs = read_idx_images(os.path.join(a.idx, "train-images-idx3-ubyte.gz"))
    mean, std = imgs.mean() / 255.0, imgs.std() / 255.0
    tf = T.Compose([T.ToPILImage(), T.RandomResizedCrop(28, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                    T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize([mean], [std])])

    class DS(torch.utils.data.Dataset):
        def __len__(self): return len(imgs)
        def __getitem__(self, i): return tf(imgs[i])

    loader = torch.utils.data.DataLoader(DS(), batch_size=a.batch, shuffle=True, drop_last=True,
                                         num_workers=a.workers, persistent_workers=a.workers > 0)
    cfg = CONFIGS[a.config]
    model = MAE(*cfg, norm_pix=a.norm_pix_loss)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and not (p.ndim <= 1 or n.endswith(".bias"))]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and (p.ndim <= 1 or n.endswith(".bias"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.blr, betas=(0.9, 0.95))
    lr = a.blr * a.batch / 256
    L = (cfg[0] // cfg[1]) ** 2
    steps, start = len(loader), time.time()
    for epoch in range(a.epochs):
        for i, x in enumerate(loader):
            e = epoch + i / steps
            cur = lr * e / a.warmup_epochs if e < a.warmup_epochs else \
                lr * 0.5 * (1 + math.cos(math.pi * (e - a.warmup_epochs) / (a.epochs - a.warmup_epochs)))
            for g in opt.param_groups:
                g["lr"] = cur
            loss = model(x, torch.rand(x.shape[0], L), a.mask_ratio)[0]
            opt.zero_grad(); loss.backward(); opt.step()
            if i % 50 == 0:
                print(json.dumps({"epoch": round(e, 3), "loss": loss.item(), "lr": cur,
                                  "elapsed_s": round(time.time() - start, 1)}), flush=True)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, a.out, metadata={"preset": a.config, "made_by": "tools/reference/pretrain_reference.py",
                                         "config": json.dumps(vars(a))})
    print(json.dumps({"out": a.out, "elapsed_s": round(time.time() - start, 1)}))


if __name__ == "__main__":
    main()
