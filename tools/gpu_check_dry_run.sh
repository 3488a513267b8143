#!/usr/bin/env bash
# A dry run of tools/gpu_check.sh on a machine without a GPU, so that the script's own plumbing
# (data, checkpoint pick, kNN comparison, fine-tuning, bench lines) is known good before GPU time
# is spent on it. CI runs it.
#
# It builds the plain CPU `mae` (release: in CI the build plus the faster run beat the dev
# profile's slower run) and runs gpu_check.sh against a stand-in carry: `mae` maps
# `--device cuda` to `cpu` (and `knn --precision amp-f16` to f32: minutes on the CPU), the two GPU
# test binaries are stand-ins that say so, `nvidia-smi` is a
# shim, and PyTorch's bench runs on the CPU when numpy, torch and timm are installed (a stand-in line otherwise).
# The real checks need the real carry (`cargo xtask gpu-build`) on a GPU machine.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cargo build --release -q -p mae-cli
fake="$(mktemp -d "${TMPDIR:-/tmp}/mae-gpu-dry.XXXXXX")"
trap 'rm -rf "$fake"' EXIT
mkdir -p "$fake/bin" "$fake/shim"

cat >"$fake/bin/mae" <<EOF2
#!/usr/bin/env bash
# cuda -> cpu; the kNN's amp-f16 pass runs in f32 here (on the CPU it takes minutes)
args=(); for a in "\$@"; do
  [ "\$a" = cuda ] && a=cpu
  [ "\$1" = knn ] && [ "\$a" = amp-f16 ] && a=f32
  args+=("\$a")
done
exec "$root/target/release/mae" "\${args[@]}"
EOF2
for t in test-parity test-gpu_step; do
  printf '#!/usr/bin/env bash\necho "dry run: %s stand-in (the real one runs on a GPU)"\n' "$t" >"$fake/bin/$t"
done
cat >"$fake/shim/nvidia-smi" <<'EOF2'
#!/usr/bin/env bash
echo "name, driver_version, memory.total [MiB], compute_cap"
echo "dry run (no GPU), -, -, -"
EOF2
cat >"$fake/shim/python" <<'EOF2'
#!/usr/bin/env bash
# gpu_check.sh's own snippets (`python -`) run as they are; the torch bench on the CPU
[ "${1:-}" = - ] && exec python3 "$@"
# torch_mae.py needs numpy, torch and timm: a host with torch alone gets the stand-in too
if ! python3 -c "import numpy, torch, timm" 2>/dev/null; then
  echo '{"impl": "pytorch", "standin": true}'
  exit 0
fi
args=(); for a in "$@"; do [ "$a" = cuda ] && a=cpu; [ "$a" = --amp ] && continue; args+=("$a"); done
exec python3 "${args[@]}"
EOF2
chmod +x "$fake"/bin/* "$fake"/shim/*

PATH="$fake/shim:$PATH" GPU_CARRY="$fake" OUT="$fake/out" PYTHON="$fake/shim/python" \
  BENCHES="${BENCHES:-tiny:16}" STEPS="${STEPS:-2}" PRETRAIN_STEPS="${PRETRAIN_STEPS:-10}" \
  PRETRAIN_BATCH="${PRETRAIN_BATCH:-32}" FINETUNE_STEPS="${FINETUNE_STEPS:-10}" bash tools/gpu_check.sh
