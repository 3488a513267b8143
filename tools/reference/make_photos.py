"""Builds a folder of ImageNet-like JPEG photos for the data benchmarks (BENCHMARKS.md).

    python3 tools/reference/make_photos.py OUT_DIR [--count 3000] [--classes 10] [--seed 0]

Real photos (the colour samples shipped with scikit-image and matplotlib: astronaut, coffee,
chelsea, rocket, motorcycle, retina, hubble, grace_hopper, ...) are cut into random crops of
varied aspect ratio (3:4 to 16:9, both orientations), resized so the shorter side is 300-500 px
(ImageNet's typical range, average about 400x350), flipped at random and saved as JPEG quality
90 into OUT_DIR/<class>/<n>.jpg. Deterministic for a seed. Needs numpy, PIL, scikit-image and
matplotlib (pip), none of which the project needs.
"""

import argparse
import os

import numpy as np
from PIL import Image


def sources():
    import matplotlib.cbook
    import skimage.data

    images = []
    for name in ["astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "motorcycle_right",
                 "retina", "hubble_deep_field", "immunohistochemistry", "colorwheel"]:
        try:
            im = getattr(skimage.data, name)()
        except Exception:  # some need a download; skipped
            continue
        if im.ndim == 3 and im.shape[2] >= 3:
            images.append(Image.fromarray(np.ascontiguousarray(im[..., :3]).astype(np.uint8)))
    images.append(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))
    return images


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--count", type=int, default=3000)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    srcs = sources()
    for c in range(a.classes):
        os.makedirs(os.path.join(a.out, f"class{c:02d}"), exist_ok=True)
    for n in range(a.count):
        src = srcs[rng.integers(len(srcs))]
        aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(16 / 9))))
        if rng.random() < 0.3:
            aspect = 1 / aspect  # portrait
        W, H = src.size
        # a crop of 40-100% of the source's shorter side, at that aspect ratio
        h = int(min(H, W / aspect) * rng.uniform(0.4, 1.0))
        w = int(h * aspect)
        x, y = rng.integers(0, W - w + 1), rng.integers(0, H - h + 1)
        im = src.crop((x, y, x + w, y + h))
        short = int(rng.integers(300, 501))
        scale = short / min(w, h)
        im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
        if rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        im.save(os.path.join(a.out, f"class{n % a.classes:02d}", f"{n:05d}.jpg"), quality=90)
    print(f"{a.count} photos from {len(srcs)} sources in {a.out}")


if __name__ == "__main__":
    main()
