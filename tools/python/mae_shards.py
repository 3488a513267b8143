"""Read mae-rs datasets (`mae data prepare` output, mae-data/FORMAT.md) from Python.

numpy only, plus PIL for JPEG and PNG records; no torch. So PyTorch users can train on the same
shards:

    import mae_shards
    for image, label in mae_shards.read("runs/in1k", split="train"):
        ...                                   # image: HWC uint8 numpy array, in order

    ds = mae_shards.MaeShards("runs/in1k", split="train", transform=None)
    len(ds); image, label = ds[0]             # a map-style Dataset for torch's DataLoader

Images come back as stored: the shorter side at the manifest's `image_size` (never enlarged),
the aspect ratio kept, channels last (`C` = 1 or 3). Formats 1 and 2 are read. Opening checks
what FORMAT.md asks of a reader (magic, version, header against the manifest, the footer and
every index entry); the XXH3 checksums are `mae data verify`'s job.

    python3 mae_shards.py DIR [--split train|val]   # prints a summary of the split
"""

import bisect
import io
import json
import mmap
import os
import struct
import sys

import numpy as np

FORMAT_VERSIONS = (1, 2)
HEADER_BYTES = 64
FOOTER_BYTES = 32
INDEX_ENTRY_BYTES = 24
MAX_SIDE = 16384
ENCODINGS = {0: "raw", 1: "jpeg", 2: "png"}
# an index entry: offset u64, len u32, width u32, height u32, label i32
INDEX_DTYPE = np.dtype(
    [("offset", "<u8"), ("len", "<u4"), ("width", "<u4"), ("height", "<u4"), ("label", "<i4")]
)


class FormatError(ValueError):
    """A dataset or shard that does not follow FORMAT.md; the message names the file."""


def _fail(path, why):
    raise FormatError(f"{path}: {why}")


def read_manifest(dataset_dir):
    """The manifest of `dataset_dir` as a dict, checked for the fields this reader uses."""
    path = os.path.join(dataset_dir, "manifest.json")
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except OSError as e:
        _fail(path, f"cannot be read ({e.strerror}); is this a prepared dataset?")
    except ValueError as e:
        _fail(path, f"not JSON ({e})")
    if not isinstance(m, dict) or m.get("format") != "mae-shards":
        _fail(path, "not an mae-shards manifest")
    if m.get("format_version") not in FORMAT_VERSIONS:
        _fail(path, f"format version {m.get('format_version')!r}: this reader knows 1 and 2")
    if m.get("channels") not in (1, 3):
        _fail(path, f"channels {m.get('channels')!r}: 1 or 3")
    m.setdefault("encoding", "raw")
    if m["encoding"] not in ENCODINGS.values():
        _fail(path, f"encoding {m['encoding']!r}")
    return m


class _Shard:
    """One memory-mapped shard: its records' offsets, lengths, sizes and labels."""

    def __init__(self, path, manifest, expected):
        self.path = path
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < HEADER_BYTES:
                    _fail(path, f"{size} bytes, shorter than the {HEADER_BYTES}-byte header")
                self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            _fail(path, f"cannot be read ({e.strerror})")
        if size != expected.get("bytes", size):
            _fail(path, f"{size} bytes, the manifest says {expected['bytes']}")
        b = self.map
        magic, version, side, channels = struct.unpack_from("<8sIII", b, 0)
        if magic != b"MAESHARD":
            _fail(path, "not a shard (wrong magic bytes)")
        if version != manifest["format_version"]:
            _fail(path, f"format version {version}, the manifest says {manifest['format_version']}")
        if side != manifest["image_size"] or channels != manifest["channels"]:
            _fail(path, f"header {side}px x {channels}, the manifest says "
                        f"{manifest['image_size']}px x {manifest['channels']}")
        self.channels = channels
        if version == 1:
            self._v1(b, size, side, channels)
        else:
            self._v2(b, size, channels, manifest)
        if len(self.index) != expected.get("samples", len(self.index)):
            _fail(path, f"{len(self.index)} records, the manifest says {expected['samples']}")

    def _v1(self, b, size, side, channels):
        record, count = struct.unpack_from("<IQ", b, 20)
        if record != 4 + side * side * channels:
            _fail(self.path, f"record length {record} for {side}x{side}x{channels}")
        if size != HEADER_BYTES + count * record:
            _fail(self.path, f"{size} bytes, {count} records of {record} need "
                             f"{HEADER_BYTES + count * record}")
        self.encoding = "raw"
        index = np.zeros(count, INDEX_DTYPE)
        starts = HEADER_BYTES + np.arange(count, dtype=np.uint64) * record
        index["offset"] = starts + 4
        index["len"] = record - 4
        index["width"] = side
        index["height"] = side
        # each record starts with its label: an i32 every `record` bytes
        index["label"] = np.ndarray((count,), "<i4", buffer=b, offset=HEADER_BYTES, strides=(record,))
        self.index = index

    def _v2(self, b, size, channels, manifest):
        (encoding,) = struct.unpack_from("<I", b, 20)
        if ENCODINGS.get(encoding) != manifest["encoding"]:
            _fail(self.path, f"encoding {encoding}, the manifest says {manifest['encoding']}")
        self.encoding = manifest["encoding"]
        if size < HEADER_BYTES + FOOTER_BYTES:
            _fail(self.path, f"{size} bytes, too short for a header and a footer")
        count, index_offset, _zero, magic = struct.unpack_from("<QQQ8s", b, size - FOOTER_BYTES)
        if magic != b"MAEINDEX":
            _fail(self.path, "no index footer (an interrupted write?)")
        if count > (size - HEADER_BYTES - FOOTER_BYTES) // INDEX_ENTRY_BYTES or \
                index_offset + count * INDEX_ENTRY_BYTES != size - FOOTER_BYTES or \
                index_offset < HEADER_BYTES:
            _fail(self.path, f"index of {count} entries at {index_offset} does not end at the footer")
        index = np.frombuffer(b, INDEX_DTYPE, count, index_offset).copy()
        ends = index["offset"].astype(np.uint64) + index["len"].astype(np.uint64)
        bad = (index["offset"] < HEADER_BYTES) | (ends > index_offset) | \
              (index["width"] < 1) | (index["width"] > MAX_SIDE) | \
              (index["height"] < 1) | (index["height"] > MAX_SIDE)
        if self.encoding == "raw":
            need = index["width"].astype(np.uint64) * index["height"].astype(np.uint64) * channels
            bad |= index["len"].astype(np.uint64) != need
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            _fail(self.path, f"index entry {i} is out of bounds or inconsistent: {index[i]}")
        self.index = index

    def image(self, i):
        e = self.index[i]
        o, n, w, h = int(e["offset"]), int(e["len"]), int(e["width"]), int(e["height"])
        data = self.map[o:o + n]
        if self.encoding == "raw":
            return np.frombuffer(data, np.uint8).reshape(h, w, self.channels)
        from PIL import Image  # only encoded records need it

        try:
            with Image.open(io.BytesIO(data)) as im:
                im = im.convert("L" if self.channels == 1 else "RGB")
                px = np.asarray(im, dtype=np.uint8)
        except Exception as e:  # PIL raises many kinds
            _fail(self.path, f"record {i} does not decode ({e})")
        if px.shape[:2] != (h, w):
            _fail(self.path, f"record {i} decodes to {px.shape[1]}x{px.shape[0]}, the index says {w}x{h}")
        return px.reshape(h, w, self.channels)


class MaeShards:
    """A split of a prepared dataset as a map-style dataset: `len(ds)`, `ds[i]` →
    `(image HWC uint8, label)` (or `transform(image), label`). Labels are -1 when unlabeled.
    Works as a `torch.utils.data.Dataset` (workers reopen the shards after a fork or a pickle)."""

    def __init__(self, dataset_dir, split="train", transform=None):
        if split not in ("train", "val"):
            raise ValueError(f"split {split!r}: train or val")
        self.dir = os.fspath(dataset_dir)
        self.split = split
        self.transform = transform
        self.manifest = read_manifest(self.dir)
        self.classes = list(self.manifest.get("classes", []))
        self._open()

    def _open(self):
        listed = self.manifest[self.split]["shards"]
        for s in listed:
            if os.path.basename(s["file"]) != s["file"]:
                _fail(os.path.join(self.dir, "manifest.json"), f"shard file {s['file']!r} is not a plain name")
        self._shards = [_Shard(os.path.join(self.dir, s["file"]), self.manifest, s) for s in listed]
        self._starts = [0]
        for s in self._shards:
            self._starts.append(self._starts[-1] + len(s.index))
        self._pid = os.getpid()

    def __len__(self):
        return self._starts[-1]

    def __getitem__(self, i):
        n = len(self)
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"index {i!r}: an integer")
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index out of range for {n} samples")
        if os.getpid() != self._pid:
            self._open()
        k = bisect.bisect_right(self._starts, i) - 1
        shard, j = self._shards[k], i - self._starts[k]
        image = shard.image(j)
        label = int(shard.index[j]["label"])
        return (self.transform(image) if self.transform else image), label

    def sizes(self):
        """(width, height) of every sample, from the indexes (nothing decoded)."""
        return [(int(e["width"]), int(e["height"])) for s in self._shards for e in s.index]

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_shards"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()


def read(dataset_dir, split="train"):
    """Yields `(image HWC uint8 array, label)` for every sample of `split`, in order."""
    ds = MaeShards(dataset_dir, split)
    for i in range(len(ds)):
        yield ds[i]


def main(argv):
    import argparse

    p = argparse.ArgumentParser(description="Summarise a split of an mae-rs dataset.")
    p.add_argument("dataset_dir")
    p.add_argument("--split", default="train", choices=["train", "val"])
    a = p.parse_args(argv)
    try:
        ds = MaeShards(a.dataset_dir, a.split)
        sizes = ds.sizes()
    except FormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    m = ds.manifest
    print(f"{a.split}: {len(ds)} images, format v{m['format_version']}, {m['encoding']}, "
          f"{m['channels']} channel(s), {len(ds.classes)} classes")
    if sizes:
        ws, hs = zip(*sizes)
        print(f"sizes: width {min(ws)}..{max(ws)}, height {min(hs)}..{max(hs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
