"""Reads a mae-rs run folder's TensorBoard event files with the `tensorboard` package's own
reader and checks them against the run's metrics.jsonl / eval.jsonl (issue #21).

    pip install tensorboard
    python tools/reference/check_tensorboard.py RUN_DIR

What it checks: TensorBoard's EventAccumulator (what `tensorboard --logdir RUN_DIR` serves) finds
the scalars; `train_loss` and `lr` have one point per metrics.jsonl line, at its step, with its
value (as float32); kNN / fine-tuning accuracies equal eval.jsonl's. Exit status 0 when all hold.
By hand, not in CI (it needs the tensorboard package).
"""

import json
import sys
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def lines(path):
    if not path.exists():
        return []
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def check(run: Path) -> int:
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    print(f"{run}: tags {sorted(tags)}")
    bad = 0

    def compare(tag, want):
        nonlocal bad
        got = [(e.step, e.value) for e in acc.Scalars(tag)] if tag in tags else []
        want = [(s, float(np.float32(v))) for s, v in want]
        same = len(got) == len(want) and all(
            gs == ws and gv == wv for (gs, gv), (ws, wv) in zip(got, want)
        )
        print(f"  {tag}: {len(got)} points, {'equal' if same else 'DIFFERENT'} to the JSON lines")
        if not same:
            bad += 1
            for g, w in list(zip(got, want))[:5]:
                print(f"    tensorboard {g}  json {w}")

    metrics = lines(run / "metrics.jsonl")
    compare("train_loss", [(m["step"], m["loss"]) for m in metrics])
    compare("lr", [(m["step"], m["lr"]) for m in metrics])
    evals = lines(run / "eval.jsonl")
    if evals and "knn_top1" in evals[0]:
        compare("knn/top1", [(e["step"], e["knn_top1"]) for e in evals])
    elif evals:
        compare("perf/test_acc1", [(e["step"], e["top1"]) for e in evals])
        compare("perf/test_acc5", [(e["step"], e["top5"]) for e in evals])
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(check(Path(sys.argv[1])))
