#!/usr/bin/env bash
# One MAE training step (forward, backward, AdamW update), ours and the PyTorch reference's, side by
# side in one run on this machine. Prints both JSON lines and the ratio for each preset:batch pair.
#   tools/bench_vs_pytorch.sh [PRESET:BATCH ...]     (default: tiny:256 vit-b16:8; STEPS=5)
# Needs: pip install torch timm numpy
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
steps=${STEPS:-5}
pairs=("$@")
[ ${#pairs[@]} -gt 0 ] || pairs=(tiny:256 vit-b16:8)
cargo build --release -q -p mae-cli
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u +%F)"
for pair in "${pairs[@]}"; do
  preset=${pair%%:*}; batch=${pair##*:}
  ours=$(target/release/mae bench --preset "$preset" --batch "$batch" --steps "$steps" --json)
  theirs=$(python3 tools/reference/torch_mae.py bench --config "$preset" --batch "$batch" --steps "$steps")
  echo "$ours"
  echo "$theirs"
  python3 - "$ours" "$theirs" <<'PY'
import json, sys
o, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"{o['config']} batch {o['batch']}: mae-rs {o['step_s']:.3f} s/step, pytorch {t['step_s']:.3f} s/step "
      f"(torch {t['torch']}, {t['threads']} threads): mae-rs takes {o['step_s'] / t['step_s']:.2f}x PyTorch's time, "
      f"{t['step_s'] / o['step_s']:.2f}x its images/s; peak RSS mae-rs {o['peak_rss_mb']:.0f} MiB, pytorch {t['peak_rss_mb']:.0f} MiB")
PY
done
