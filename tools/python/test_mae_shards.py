"""Round trip of tools/python/mae_shards.py against `mae data prepare` (CI runs it after the
release build; needs numpy and PIL, python3-numpy and python3-pil on Debian).

    python3 tools/python/test_mae_shards.py            # uses target/release/mae (builds it)
    MAE=path/to/mae python3 tools/python/test_mae_shards.py

Non-square photos-like images go through `prepare` as raw, PNG and JPEG records and come back
with their aspect ratio, their labels and (raw = PNG exactly, JPEG closely) their pixels; the
bundled Fashion-MNIST comes back byte for byte; a hand-built format-1 dataset reads; a cut shard,
a missing manifest and a bad index are errors naming the file.
"""

import gzip
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import unittest

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import mae_shards  # noqa: E402

SIZE = 64
# (width, height): landscape, portrait, smaller than --size (kept), a 5:1 panorama (capped at 4:1)
SHAPES = [(300, 200), (150, 260), (90, 60), (500, 100)]


def mae_binary():
    mae = os.environ.get("MAE")
    if mae:
        return mae
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "mae-cli"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target", "release", "mae")


def stored_size(w, h, size):
    """FORMAT.md's stored size: shorter side min(short, size), longer scaled, capped at 4x."""
    short, long_ = min(w, h), max(w, h)
    new_short = min(short, size)
    new_long = min(int(round(long_ * new_short / short)), 4 * new_short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


class RoundTrip(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.mae = mae_binary()
        cls.tmp = tempfile.TemporaryDirectory()
        cls.src = os.path.join(cls.tmp.name, "photos")
        rng = np.random.default_rng(0)
        cls.sources = []  # (class, file name, PIL image), in the order prepare lists them
        for c, cls_name in enumerate(["cat", "dog"]):
            os.makedirs(os.path.join(cls.src, cls_name))
            for k, (w, h) in enumerate(SHAPES):
                # smooth gradients plus a little noise: photo-like, so JPEG stays close
                y, x = np.mgrid[0:h, 0:w]
                px = np.stack([x * 255 // w, y * 255 // h, (x + y + 40 * c) % 256], -1)
                px = np.clip(px + rng.integers(-3, 4, px.shape), 0, 255).astype(np.uint8)
                name = f"img{k}.png"
                Image.fromarray(px).save(os.path.join(cls.src, cls_name, name))
                cls.sources.append((c, name, Image.fromarray(px)))
        cls.out = {}
        for enc in ["raw", "png", "jpeg"]:
            out = os.path.join(cls.tmp.name, f"ds-{enc}")
            cls.prepare(["--from", "imagefolder", cls.src, "--out", out, "--size", str(SIZE),
                         "--encoding", enc])
            cls.out[enc] = out

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    @classmethod
    def prepare(cls, args):
        r = subprocess.run([cls.mae, "data", "prepare", *args], capture_output=True, text=True)
        if r.returncode != 0:
            raise AssertionError(f"mae data prepare {args}: {r.stderr}")

    def test_aspect_ratio_labels_and_pixels_come_back(self):
        raw = list(mae_shards.read(self.out["raw"]))
        self.assertEqual(len(raw), len(self.sources))
        for (image, label), (c, name, src) in zip(raw, self.sources):
            self.assertEqual(label, c, name)
            h, w, ch = image.shape
            self.assertEqual(ch, 3)
            self.assertEqual((w, h), stored_size(src.width, src.height, SIZE), name)
            if max(src.size) <= 4 * min(src.size):
                # the aspect ratio within rounding of the longer side
                self.assertLess(abs(w / h - src.width / src.height), 1.0 / min(w, h), name)
            if (w, h) == src.size:
                np.testing.assert_array_equal(image, np.asarray(src), name)
            elif max(src.size) <= 4 * min(src.size):
                # the same resize as PIL's bicubic, to within rounding
                ref = np.asarray(src.resize((w, h), Image.BICUBIC), dtype=np.int16)
                self.assertLess(np.abs(image.astype(np.int16) - ref).mean(), 0.5, name)
        png = list(mae_shards.read(self.out["png"]))
        jpeg = list(mae_shards.read(self.out["jpeg"]))
        for (a, la), (b, lb), (j, lj) in zip(raw, png, jpeg):
            np.testing.assert_array_equal(a, b)
            self.assertEqual(a.shape, j.shape)
            self.assertEqual(la, lb)
            self.assertEqual(la, lj)
            self.assertLess(np.abs(a.astype(np.int16) - j.astype(np.int16)).mean(), 3.0)

    def test_the_map_style_dataset(self):
        ds = mae_shards.MaeShards(self.out["jpeg"], transform=lambda im: im.shape)
        self.assertEqual(len(ds), len(self.sources))
        self.assertEqual(ds.classes, ["cat", "dog"])
        self.assertEqual(ds[-1], ds[len(ds) - 1])
        with self.assertRaises(IndexError):
            ds[len(ds)]
        with self.assertRaises(TypeError):
            ds["0"]
        self.assertEqual(ds.sizes()[0], stored_size(*SHAPES[0], SIZE))
        # pickled (as DataLoader workers under spawn get it): reopened, the same samples
        again = pickle.loads(pickle.dumps(mae_shards.MaeShards(self.out["raw"])))
        np.testing.assert_array_equal(again[3][0], list(mae_shards.read(self.out["raw"]))[3][0])
        self.assertEqual(len(list(mae_shards.read(self.out["raw"], split="val"))), 0)
        with self.assertRaises(ValueError):
            mae_shards.MaeShards(self.out["raw"], split="test")

    def test_bundled_fashion_mnist_byte_for_byte(self):
        out = os.path.join(self.tmp.name, "fmnist")
        self.prepare(["--from", "idx", os.path.join(ROOT, "data", "fashion-mnist"), "--out", out,
                      "--val-fraction", "0"])
        with gzip.open(os.path.join(ROOT, "data", "fashion-mnist", "t10k-images-idx3-ubyte.gz")) as f:
            images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)
        with gzip.open(os.path.join(ROOT, "data", "fashion-mnist", "t10k-labels-idx1-ubyte.gz")) as f:
            labels = np.frombuffer(f.read(), np.uint8, offset=8)
        ds = mae_shards.MaeShards(out)
        self.assertEqual(len(ds), 10000)
        for i in [0, 1, 4999, 9999]:
            image, label = ds[i]
            np.testing.assert_array_equal(image, images[i])
            self.assertEqual(label, labels[i])

    def test_a_format_1_dataset_reads(self):
        d = os.path.join(self.tmp.name, "v1")
        os.makedirs(d)
        side, ch = 3, 1
        records = [(-1 if i == 2 else i, bytes([i * 10 + k for k in range(9)])) for i in range(3)]
        body = b"".join(struct.pack("<i", lab) + px for lab, px in records)
        header = struct.pack("<8sIIIIQ", b"MAESHARD", 1, side, ch, 4 + side * side * ch, 3)
        shard = header + bytes(64 - len(header)) + body
        with open(os.path.join(d, "train-00000.shard"), "wb") as f:
            f.write(shard)
        manifest = {"format": "mae-shards", "format_version": 1, "image_size": side, "channels": ch,
                    "count": 3, "classes": ["a", "b"], "mean": [0.5], "std": [0.5], "source": "-",
                    "train": {"count": 3, "shards": [{"file": "train-00000.shard", "samples": 3,
                                                      "bytes": len(shard), "checksum": "-"}]},
                    "val": {"count": 0, "shards": []}, "skipped": []}
        with open(os.path.join(d, "manifest.json"), "w") as f:
            import json
            json.dump(manifest, f)
        got = list(mae_shards.read(d))
        self.assertEqual([lab for _, lab in got], [0, 1, -1])
        np.testing.assert_array_equal(got[1][0].ravel(), np.frombuffer(records[1][1], np.uint8))
        self.assertEqual(got[0][0].shape, (3, 3, 1))

    def test_damage_is_an_error_naming_the_file(self):
        import shutil

        d = os.path.join(self.tmp.name, "damaged")
        shutil.copytree(self.out["raw"], d)
        shard = os.path.join(d, "train-00000.shard")
        with open(shard, "rb") as f:
            data = f.read()
        with open(shard, "wb") as f:
            f.write(data[:-10])
        with self.assertRaisesRegex(mae_shards.FormatError, "train-00000.shard"):
            mae_shards.MaeShards(d)
        # right size, an index entry pointing past the records
        bad = bytearray(data)
        count, index_offset = struct.unpack_from("<QQ", bad, len(bad) - 32)
        struct.pack_into("<Q", bad, index_offset, len(bad))
        with open(shard, "wb") as f:
            f.write(bad)
        with self.assertRaisesRegex(mae_shards.FormatError, "train-00000.shard: index entry 0"):
            mae_shards.MaeShards(d)
        os.remove(os.path.join(d, "manifest.json"))
        with self.assertRaisesRegex(mae_shards.FormatError, "manifest.json"):
            mae_shards.MaeShards(d)
        r = subprocess.run([sys.executable, os.path.join(HERE, "mae_shards.py"), d],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 1)
        self.assertIn("manifest.json", r.stderr)
        r = subprocess.run([sys.executable, os.path.join(HERE, "mae_shards.py"), self.out["png"]],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("8 images, format v2, png", r.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
