"""timm's RandAugment throughput on 224-px photos, the baseline of tools/bench_randaugment.sh.

    python3 tools/reference/randaugment_bench.py PHOTOS_DIR OUT.raw [--count 256] [--rounds 4]

Reads the first COUNT JPEGs of PHOTOS_DIR (make_photos.py output), centre-crops and resizes each
to 224x224 RGB (PIL bicubic) and writes them to OUT.raw (count x 224 x 224 x 3 bytes: the
input of mae-data's `randaugment_throughput` example, so both sides augment the same pixels).
Then times `rand_augment_transform('rand-m9-mstd0.5-inc1')` with the hyper-parameters
`create_transform` gives it in main_finetune.py (translate_const 100, img_mean of the ImageNet
mean, bicubic) over those images, one thread, ROUNDS passes; prints one JSON line (images/s,
the median pass). Needs timm, PIL, numpy (pip; not for CI).
"""
import argparse
import json
import os
import time

import numpy as np
from PIL import Image
from timm.data.auto_augment import rand_augment_transform


def main():
    p = argparse.ArgumentParser()
    p.add_argument("photos")
    p.add_argument("out")
    p.add_argument("--count", type=int, default=256)
    p.add_argument("--rounds", type=int, default=4)
    a = p.parse_args()
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(a.photos) for f in fs if f.endswith(".jpg"))
    images = []
    for f in files[: a.count]:
        im = Image.open(f).convert("RGB")
        s = min(im.size)
        left, top = (im.width - s) // 2, (im.height - s) // 2
        images.append(im.crop((left, top, left + s, top + s)).resize((224, 224), Image.BICUBIC))
    with open(a.out, "wb") as fh:
        for im in images:
            fh.write(np.asarray(im).tobytes())
    mean = (0.485, 0.456, 0.406)
    ra = rand_augment_transform("rand-m9-mstd0.5-inc1", dict(
        translate_const=int(224 * 0.45), img_mean=tuple(min(255, round(255 * x)) for x in mean),
        interpolation=Image.BICUBIC))
    times, raised = [], 0
    for _ in range(a.rounds):
        t = time.perf_counter()
        for im in images:
            try:
                ra(im)
            except ValueError:
                # PosterizeIncreasing at magnitude 10 asks Pillow >= 11 for 0 bits (NOTES.md)
                raised += 1
        times.append(time.perf_counter() - t)
    t = sorted(times)[len(times) // 2]
    print(json.dumps({"impl": "timm", "images": len(images), "img_per_s": round(len(images) / t, 1),
                      "passes_s": [round(x, 3) for x in times], "raised": raised}))


if __name__ == "__main__":
    main()
