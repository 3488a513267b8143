"""PyTorch reference for fine-tuning parity: the classifier of models_vit.py (global average
pool of the patch tokens, fc_norm, head) built from timm's Block, or with --pool token timm's own
VisionTransformer(global_pool='token') (models_vit.py with global_pool=False: the final norm and
the cls token; timm's supervised ViTs), the soft-target cross-entropy
that main_finetune.py trains with under mixup/label smoothing, and util/pos_embed.py's
interpolate_pos_embed. Writes one safetensors fixture for mae-core's tests. Not part of the product.

  python torch_vit.py OUT.safetensors --seed S [--config parity] [--classes 5] [--batch 3] [--pool avg|token]
"""
import argparse, json
import torch, torch.nn as nn, torch.nn.functional as F
from timm.models.vision_transformer import Block
from safetensors.torch import save_file
from torch_mae import CONFIGS, sincos_2d


class ViT(nn.Module):
    """models_vit.VisionTransformer(global_pool=True) without dropout/drop path."""

    def __init__(self, img, p, c, d, depth, h, classes):
        super().__init__()
        g = img // p
        self.patch_embed = nn.Module(); self.patch_embed.proj = nn.Conv2d(c, d, p, p)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        # the fine-tuning model's pos_embed is a trained parameter, loaded from pretraining
        self.pos_embed = nn.Parameter(torch.from_numpy(sincos_2d(d, g)).float().unsqueeze(0)
                                      + 0.01 * torch.randn(1, g * g + 1, d))
        ln = lambda n, **kw: nn.LayerNorm(n, eps=1e-6, **kw)
        self.blocks = nn.ModuleList([Block(d, h, 4.0, qkv_bias=True, norm_layer=ln) for _ in range(depth)])
        self.fc_norm = ln(d)
        self.head = nn.Linear(d, classes)
        with torch.no_grad():
            for m in self.modules():  # non-trivial norms so their gradients are tested too
                if isinstance(m, nn.LayerNorm):
                    m.weight.add_(0.1 * torch.randn_like(m.weight)); m.bias.add_(0.1 * torch.randn_like(m.bias))

    def forward(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = x + self.pos_embed[:, 1:, :]
        cls = self.cls_token + self.pos_embed[:, :1, :]
        x = torch.cat((cls.expand(x.shape[0], -1, -1), x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = x[:, 1:, :].mean(dim=1)
        return self.head(self.fc_norm(x))


def timm_token_vit(img, p, c, d, depth, h, classes):
    """timm's VisionTransformer with the cls-token head, as models_vit.py builds it for
    global_pool=False (qkv_bias, LayerNorm eps 1e-6), norms made non-trivial as in ViT."""
    from functools import partial
    from timm.models.vision_transformer import VisionTransformer
    m = VisionTransformer(img_size=img, patch_size=p, in_chans=c, num_classes=classes, embed_dim=d,
                          depth=depth, num_heads=h, mlp_ratio=4.0, qkv_bias=True, global_pool="token",
                          norm_layer=partial(nn.LayerNorm, eps=1e-6))
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.weight.add_(0.1 * torch.randn_like(mod.weight)); mod.bias.add_(0.1 * torch.randn_like(mod.bias))
        m.head.weight.normal_(0, 0.05)  # larger than its init, so that the logits are far from zero
    return m


def interpolate_pos_embed(pos_embed, new):
    """util/pos_embed.py: bicubic on the patch grid, extra (cls) token kept."""
    d = pos_embed.shape[-1]
    old = int((pos_embed.shape[-2] - 1) ** 0.5)
    extra = pos_embed[:, :1]
    tokens = pos_embed[:, 1:].reshape(-1, old, old, d).permute(0, 3, 1, 2)
    tokens = F.interpolate(tokens, size=(new, new), mode="bicubic", align_corners=False)
    tokens = tokens.permute(0, 2, 3, 1).flatten(1, 2)
    return torch.cat((extra, tokens), dim=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out"); ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default="parity"); ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--batch", type=int, default=3)
    ap.add_argument("--pool", choices=["avg", "token"], default="avg")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    img, p, c, d, depth, h = CONFIGS[a.config][:6]
    build = ViT if a.pool == "avg" else timm_token_vit
    model = build(img, p, c, d, depth, h, a.classes)
    imgs = torch.randn(a.batch, c, img, img)
    # soft targets as Mixup(label_smoothing=0.1) makes them: two smoothed one-hots mixed by lam
    labels = torch.randint(0, a.classes, (a.batch,))
    off, on = 0.1 / a.classes, 1 - 0.1 + 0.1 / a.classes
    y1 = torch.full((a.batch, a.classes), off).scatter_(1, labels[:, None], on)
    lam = 0.7
    targets = y1 * lam + y1.flip(0) * (1 - lam)
    logits = model(imgs)
    loss = torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()  # SoftTargetCrossEntropy
    loss.backward()
    t = {}
    for n, prm in model.named_parameters():
        t["model." + n] = prm.detach().contiguous()
        t["grad." + n] = prm.grad.detach().contiguous()
    t["input"] = imgs; t["targets"] = targets; t["logits"] = logits.detach(); t["loss"] = loss.detach().reshape(1)
    # interpolate_pos_embed cases: up 7→8 (28→32 px at patch 4) and down 8→6
    src7 = torch.randn(1, 1 + 49, 8); src8 = torch.randn(1, 1 + 64, 8)
    t["interp.src7"] = src7; t["interp.up8"] = interpolate_pos_embed(src7, 8)
    t["interp.src8"] = src8; t["interp.down6"] = interpolate_pos_embed(src8, 6)
    meta = {"config": a.config, "seed": str(a.seed), "classes": str(a.classes), "batch": str(a.batch),
            "global_pool": a.pool,
            "made_by": "tools/reference/torch_vit.py", "torch": torch.__version__}
    save_file({k: v.contiguous() for k, v in t.items()}, a.out, metadata=meta)
    print(json.dumps({"loss": loss.item(), "out": a.out}))


if __name__ == "__main__":
    main()
