"""torchvision's side of the loader benchmark (tools/bench_data.sh): the official MAE pretraining
input pipeline (main_pretrain.py: ImageFolder + RandomResizedCrop(224, scale=(0.2, 1.0),
bicubic) + RandomHorizontalFlip + ToTensor + Normalize(ImageNet)) in a DataLoader, images/s over
whole batches after one warm-up batch. One JSON line on stdout.

    python3 tools/reference/loader_baseline.py IMAGE_DIR [--size 224] [--batch 64]
        [--workers 2] [--batches 40]
"""

import argparse
import json
import time

import torch
import torchvision.datasets as datasets
import torchvision.transforms as transforms


def main():
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=40)
    a = p.parse_args()
    torch.set_num_threads(1)
    t = transforms.Compose([
        transforms.RandomResizedCrop(a.size, scale=(0.2, 1.0), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    ds = datasets.ImageFolder(a.root, transform=t)
    loader = torch.utils.data.DataLoader(ds, batch_size=a.batch, shuffle=True, num_workers=a.workers,
                                         pin_memory=False, drop_last=True, persistent_workers=True)
    done, start = 0, None
    while done <= a.batches:
        for images, _ in loader:
            if start is None:
                start = time.perf_counter()  # after the warm-up batch
            else:
                done += 1
            if done == a.batches:
                break
        if done == a.batches:
            break
    secs = time.perf_counter() - start
    print(json.dumps({"impl": "torchvision", "torch": torch.__version__, "root": a.root, "size": a.size,
                      "batch": a.batch, "workers": a.workers, "batches": a.batches,
                      "img_per_s": round(a.batches * a.batch / secs, 1)}))


if __name__ == "__main__":
    main()
