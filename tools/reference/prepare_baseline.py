"""The straightforward Python side of the preparation benchmark (tools/bench_data.sh): what a
user would write instead of `mae data prepare` -- PIL decode, EXIF transpose, RGB, resize the
shorter side to --size (bicubic, never enlarged), save, in a process pool. One JSON line.

    python3 tools/reference/prepare_baseline.py IMAGE_DIR OUT_DIR [--size 256]
        [--encoding jpeg|raw] [--quality 90] [--workers 2]

--encoding jpeg writes OUT_DIR/<class>/<name>.jpg (the same folder layout, so torchvision's
ImageFolder reads it: the loader benchmark's "same pixels" baseline); raw writes the pixels as
one .npy per image.
"""

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image, ImageOps

ARGS = None


def convert(job):
    src, dst = job
    with Image.open(src) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        w, h = im.size
        s = min(ARGS.size, w, h)
        if s != min(w, h):
            scale = s / min(w, h)
            im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
        if ARGS.encoding == "jpeg":
            im.save(dst + ".jpg", quality=ARGS.quality)
        else:
            np.save(dst + ".npy", np.asarray(im))
    return 1


def init(args):
    global ARGS
    ARGS = args


def main():
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("out")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--encoding", default="jpeg", choices=["jpeg", "raw"])
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    jobs = []
    for c in sorted(os.listdir(a.root)):
        os.makedirs(os.path.join(a.out, c), exist_ok=True)
        for f in sorted(os.listdir(os.path.join(a.root, c))):
            jobs.append((os.path.join(a.root, c, f), os.path.join(a.out, c, os.path.splitext(f)[0])))
    start = time.perf_counter()
    with ProcessPoolExecutor(a.workers, initializer=init, initargs=(a,)) as pool:
        n = sum(pool.map(convert, jobs, chunksize=16))
    secs = time.perf_counter() - start
    print(json.dumps({"impl": "pil-pool", "encoding": a.encoding, "size": a.size, "workers": a.workers,
                      "images": n, "seconds": round(secs, 2), "img_per_s": round(n / secs, 1)}))


if __name__ == "__main__":
    main()
