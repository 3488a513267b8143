"""torchvision's RandomResizedCrop.get_params on recorded draws: the fixture of
mae-data/tests/crop_sampling.rs (mae-data/tests/fixtures/rrc_torchvision.json).

torch's generator cannot be handed to Rust, so for each case this seeds torch, asks torchvision
for its crop, then seeds again and replays the same calls in the same order (the uniform area
fraction, the exp of the uniform log-ratio, the two randint offsets) to record the numbers
torchvision drew. The replay is checked against torchvision's own answer before it is written;
the Rust test feeds the recorded numbers to mae_data::augment::random_resized_crop and must
reach torchvision's crop.

Run: python3 tools/reference/rrc_fixture.py   (needs torch and torchvision; not for CI)
"""
import json
import math
import pathlib
import random

import torch
import torchvision
from torchvision.transforms import RandomResizedCrop

OUT = pathlib.Path(__file__).resolve().parents[2] / "mae-data/tests/fixtures/rrc_torchvision.json"


def replay(width, height, scale, ratio, seed):
    torch.manual_seed(seed)
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    fractions, aspects, below = [], [], []
    for _ in range(10):
        frac = torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
        fractions.append(frac)
        aspects.append(aspect)
        target_area = area * frac
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,)).item()
            j = torch.randint(0, width - w + 1, size=(1,)).item()
            below += [i, j]
            break
    return fractions, aspects, below


def main():
    rng = random.Random(0)
    settings = [((0.2, 1.0), (3 / 4, 4 / 3)), ((0.08, 1.0), (3 / 4, 4 / 3)),
                ((0.9, 1.0), (1.5, 2.0)), ((0.9, 1.0), (0.3, 0.5))]
    sizes = [(341, 256), (256, 341), (256, 256), (1024, 256), (256, 1024), (28, 28), (5, 3),
             (1, 7), (500, 20), (20, 500), (384, 288), (640, 480)]
    cases = []
    for k in range(400):
        width, height = sizes[k % len(sizes)] if k < 48 else (rng.randint(1, 600), rng.randint(1, 600))
        scale, ratio = settings[k % len(settings)]
        seed = 1000 + k
        img = torch.zeros((1, height, width), dtype=torch.uint8)
        torch.manual_seed(seed)
        top, left, h, w = RandomResizedCrop.get_params(img, list(scale), list(ratio))
        fractions, aspects, below = replay(width, height, scale, ratio, seed)
        # the replay drew what torchvision drew: its offsets are torchvision's
        assert not below or (below[0], below[1]) == (top, left), (k, below, top, left)
        cases.append({"width": width, "height": height, "scale": scale, "ratio": ratio,
                      "area_fraction": fractions, "aspect": aspects, "below": below,
                      "expect": [left, top, w, h]})
    fallbacks = sum(1 for c in cases if not c["below"])
    OUT.write_text(json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__,
                               "fallbacks": fallbacks, "cases": cases}, indent=0) + "\n")
    print(f"{len(cases)} cases ({fallbacks} take the fallback) -> {OUT}")


if __name__ == "__main__":
    main()
