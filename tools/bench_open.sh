#!/usr/bin/env bash
# Open-to-first-step on a large dataset with the page cache dropped (BENCHMARKS.md, "Data at
# ImageNet scale"). Builds a GB-sized raw dataset from a prepared one by copying its shards
# (real copies, so nothing is shared in the page cache), then, each time after
# `sync; echo 3 > /proc/sys/vm/drop_caches` (root):
#   - `mae data verify` on it: the full checksum pass that `Dataset::open` made before format v2
#     (at 6c4ac0e every open hashed every shard, on every start and every rank);
#   - `mae pretrain --max-steps 1 --log-every 1` on it: seconds from the start to the first step's
#     line, and to the end (a finished run waits for the background verification);
#   - the same pretrain on the small source dataset, cache warm: the model's own start and step.
#   bash tools/bench_open.sh PREPARED_RAW_DATASET [WORK_DIR]      (GB=10)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
src="$1" work="${2:-${TMPDIR:-/tmp}/mae-bench-open}" gb="${GB:-10}"
cd "$root"
cargo build --release -q -p mae-cli
mae="$root/target/release/mae"
grep -m1 "model name" /proc/cpuinfo
echo "cpu family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | tr -d ' '), model $(grep -m1 '^model\s' /proc/cpuinfo | cut -d: -f2 | tr -d ' '), $(nproc) cores"
big="$work/big"
if [ ! -f "$big/manifest.json" ]; then
  mkdir -p "$big"
  python3 - "$src" "$big" "$gb" <<'PY'
import json, os, shutil, sys
src, big, gb = sys.argv[1], sys.argv[2], float(sys.argv[3])
m = json.load(open(os.path.join(src, "manifest.json")))
shards, total, copy = [], 0, 0
while total < gb * 1e9:
    for s in m["train"]["shards"]:
        name = f"train-{len(shards):05d}.shard"
        shutil.copyfile(os.path.join(src, s["file"]), os.path.join(big, name))
        shards.append(dict(s, file=name))
        total += s["bytes"]
    copy += 1
n = sum(s["samples"] for s in shards)
m["train"] = {"count": n, "shards": shards}
m["count"] = n + m["val"]["count"]
assert not m["val"]["shards"], "a source with a train split only"
json.dump(m, open(os.path.join(big, "manifest.json"), "w"), indent=1)
print(f"{big}: {len(shards)} shards, {total / 1e9:.2f} GB, {n} images ({copy} copies of {src})")
PY
fi
du -sh "$big"
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
first_step() {  # seconds to the first "step " line on stdout, and to the end
  python3 - "$@" <<'PY'
import subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
first = None
for line in p.stdout:
    if first is None and " step " in f" {line}":
        first = time.perf_counter() - t0
p.wait()
end = time.perf_counter() - t0
print(f"first step {first:.2f}s, end {end:.2f}s, exit {p.returncode}" if first else f"no step line (exit {p.returncode})")
PY
}
drop
t0=$(date +%s.%N); "$mae" data verify "$big" | tail -1; t1=$(date +%s.%N)
echo "verify, cold: $(echo "$t1 - $t0" | bc) s  (what every open cost before v2)"
drop
rm -rf "$work/run-big"
echo "pretrain on $big, cold: $(first_step "$mae" pretrain --data "$big" --preset small32 --out "$work/run-big" --max-steps 1 --log-every 1 --batch-size 64)"
rm -rf "$work/run-small"
"$mae" data verify "$src" >/dev/null  # warm
echo "pretrain on $src, warm: $(first_step "$mae" pretrain --data "$src" --preset small32 --out "$work/run-small" --max-steps 1 --log-every 1 --batch-size 64)"
