"""timm's RandAugment ops on fixed arguments: the fixture of mae-data/tests/randaugment.rs
(mae-data/tests/fixtures/randaugment_timm.{json,bin}).

For every op of `rand-m9-mstd0.5-inc1` (timm's `_RAND_INCREASING_TRANSFORMS`) and of the plain
list (`_RAND_TRANSFORMS`), at several magnitudes and both signs, this calls timm's own op function
(`timm.data.auto_augment.NAME_TO_OP[name]` with `LEVEL_TO_ARG[name]`'s arguments, the sign of
`_randomly_negate` fixed) with the keyword arguments `create_transform` gives it for
`main_finetune.py` (`fillcolor` = the ImageNet mean in bytes, `resample` = BICUBIC), on an RGB and
a grayscale image of odd, non-square size, and writes the input and every output as raw bytes.
The Rust test applies mae_data::randaugment to the same images with the same magnitude and sign
and compares byte for byte.

The images: a synthetic scene (smooth gradients, disks, stripes, noise; histogram covering
0..255), a low-contrast one (values 60..180: AutoContrast and Equalize do something) and a real
photo (scikit-image's `coffee`, reduced), plus grayscale versions of each.

Run: python3 tools/reference/randaugment_fixture.py   (needs timm, PIL, numpy, scikit-image; not
for CI)
"""
import json
import pathlib

import numpy as np
from PIL import Image
from timm.data import auto_augment as aa

OUT = pathlib.Path(__file__).resolve().parents[2] / "mae-data/tests/fixtures"
MEAN = (0.485, 0.456, 0.406)
FILL = tuple(min(255, round(255 * x)) for x in MEAN)  # create_transform's img_mean


def scene(w, h, seed, lo=0, hi=255):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * (x / (w - 1))
    g = 255 * (y / (h - 1))
    b = 127 + 100 * np.sin(x / 3.0) * np.cos(y / 5.0)
    img = np.stack([r, g, b], -1)
    for _ in range(6):
        cx, cy, rad = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(3, w / 4)
        inside = (x - cx) ** 2 + (y - cy) ** 2 < rad**2
        img[inside] = rng.uniform(0, 255, 3)
    img[:, ::7] = 0.7 * img[:, ::7]
    img += rng.normal(0, 8, img.shape)
    img = lo + (hi - lo) * (img - img.min()) / (img.max() - img.min())
    return Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8), "RGB")


def photo():
    """A real photo: scikit-image's `coffee` (600x400), bicubically reduced to 45x30."""
    import skimage.data
    return Image.fromarray(skimage.data.coffee()).resize((45, 30), Image.BICUBIC)


def cases():
    names = list(dict.fromkeys(aa._RAND_INCREASING_TRANSFORMS + aa._RAND_TRANSFORMS))
    for name in names:
        level_fn = aa.LEVEL_TO_ARG[name]
        mags = [None] if level_fn is None else [0.0, 4.5, 8.6, 9.0, 9.7, 10.0]
        for m in mags:
            for sign in ([1] if m is None else [1, -1]):
                yield name, m, sign


def level_args(name, m, sign):
    level_fn = aa.LEVEL_TO_ARG[name]
    if level_fn is None:
        return ()
    # _randomly_negate draws random.random() > 0.5: negative when it is; fix it by the sign
    orig = aa._randomly_negate
    aa._randomly_negate = (lambda v: -v) if sign < 0 else (lambda v: v)
    try:
        return level_fn(m, dict(aa._HPARAMS_DEFAULT, translate_const=100, img_mean=FILL))
    finally:
        aa._randomly_negate = orig


def main():
    images = {
        "scene": scene(41, 30, 0),
        "dull": scene(41, 30, 1, 60, 180),
        "photo": photo(),
    }
    for key in list(images):
        images[key + "_gray"] = images[key].convert("L")
    blob = bytearray()
    index = {"fill": list(FILL), "images": {}, "cases": []}

    def put(img):
        data = np.asarray(img).tobytes()
        at = len(blob)
        blob.extend(data)
        return [at, len(data)]

    for key, img in images.items():
        index["images"][key] = {"width": img.width, "height": img.height,
                                "channels": len(img.getbands()), "at": put(img)}
    for name, m, sign in cases():
        args = level_args(name, m, sign)
        if sign < 0 and args == level_args(name, m, 1):
            continue  # an op without a sign
        for key, img in images.items():
            fill = FILL if img.mode == "RGB" else FILL[0]
            note = None
            try:
                out = aa.NAME_TO_OP[name](img, *args, fillcolor=fill, resample=Image.BICUBIC)
            except ValueError as e:
                # Posterize to 0 bits (PosterizeIncreasing at magnitude 10, which mstd 0.5 reaches
                # after the clamp): Pillow >= 11 refuses it, older Pillow (the official runs')
                # masked every bit away. Recorded as the older Pillow did it.
                assert name.startswith("Posterize") and args == (0,), (name, args, e)
                out = img.point(lambda v: 0)
                note = f"Pillow refuses: {e}; older Pillow's black image"
            index["cases"].append({"op": name, "magnitude": m, "sign": sign, "args": list(args),
                                   "image": key, "at": put(out), "note": note})
    (OUT / "randaugment_timm.bin").write_bytes(bytes(blob))
    (OUT / "randaugment_timm.json").write_text(json.dumps(index, indent=0) + "\n")
    print(f"{len(index['cases'])} cases, {len(blob)} bytes")


if __name__ == "__main__":
    main()
