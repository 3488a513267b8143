#!/usr/bin/env bash
# Builds the CUDA binaries on a machine WITHOUT a GPU or a CUDA install, into one folder that can
# be carried to a GPU machine (`cargo xtask gpu-build`; issue #7).
#
# Idempotent: every step is skipped when its result is already there.
#  1. CUDA 13.0 from PyPI wheels into a venv (nvcc, runtime, cuBLAS, NVRTC, CCCL headers). 13.0 is
#     pinned because the lent GPUs run driver 580 (CUDA 13.0): PTX from a newer nvcc can be
#     refused when the driver loads it.
#  2. A CUDA_ROOT that cudarc's and dfdx's build scripts accept: include/ with the wheels' headers,
#     lib/ with unversioned links to the wheels' libraries and a STUB libcuda.so (soname
#     libcuda.so.1, an empty function for every `cu*` name cudarc binds), so that the program
#     links here and loads the real driver library where it runs.
#  3. An `nvidia-smi` shim (dfdx's build script asks it for the compute capability; the H200 is
#     9.0, overridable with GPU_COMPUTE_CAP) and nvcc on PATH from its own bin/ (beside
#     nvcc.profile).
#  4. `cargo build --release --features cuda` of the `mae` binary and of the GPU test binaries
#     (mae-core's parity, mae-train's CPU-vs-GPU step), copied into $GPU_CARRY (default
#     target/gpu-carry); tools/gpu_check.sh runs them there.
#
# Environment: GPU_TOOLCHAIN (default target/gpu-toolchain), GPU_CARRY, GPU_COMPUTE_CAP (9.0),
# PYTHON (python3). `--toolchain-only` stops after step 3.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
toolchain="${GPU_TOOLCHAIN:-$root/target/gpu-toolchain}"
carry="${GPU_CARRY:-$root/target/gpu-carry}"
cap="${GPU_COMPUTE_CAP:-9.0}"
python="${PYTHON:-python3}"
venv="$toolchain/venv"
cuda_root="$toolchain/cuda"
shims="$toolchain/bin"

say() { echo "gpu-build: $*"; }

# 1. the wheels
if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv"
  "$python" -m venv "$venv"
fi
wheels=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-cuda-runtime==13.0.96"
  "nvidia-cublas==13.0.2.14"
  "nvidia-cuda-nvrtc==13.0.88"
  "nvidia-cuda-cccl==13.0.85"
  # nvcc's front end (cicc) and its headers come in these two: unpinned, pip takes the newest,
  # whose PTX (ISA 9.5 from 13.5) the 13.0 ptxas refuses
  "nvidia-nvvm==13.0.88"
  "nvidia-cuda-crt==13.0.88"
)
# installed exactly as pinned (a name==version per line of `pip freeze`), or (re)installed
if ! printf '%s\n' "${wheels[@]}" | grep -vxF -f <("$venv/bin/python" -m pip freeze 2>/dev/null) |
    { ! grep -q .; }; then
  say "installing ${wheels[*]}"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${wheels[@]}"
fi
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
nv="$site/nvidia"
# the CUDA 13 wheels install under nvidia/cu13 (older ones under nvidia/<component>)
if [ -d "$nv/cu13" ]; then nv="$nv/cu13"; fi
nvcc="$(find "$nv" -path '*/bin/nvcc' -type f | head -n1)"
[ -n "$nvcc" ] || { echo "gpu-build: nvcc not found under $nv" >&2; exit 1; }

# 2. CUDA_ROOT
mkdir -p "$cuda_root/include" "$cuda_root/lib" "$shims"
for inc in $(find "$nv" -type d -name include); do
  for f in "$inc"/*; do
    [ -e "$cuda_root/include/$(basename "$f")" ] || ln -s "$f" "$cuda_root/include/"
  done
done
[ -f "$cuda_root/include/cuda.h" ] || { echo "gpu-build: cuda.h not found under $nv" >&2; exit 1; }
link_lib() { # link_lib NAME: lib/libNAME.so -> the wheel's libNAME.so.<major>
  local found
  found="$(find "$nv" -name "lib$1.so.[0-9]*" -type f | sort | head -n1)"
  [ -n "$found" ] || { echo "gpu-build: lib$1.so not found under $nv" >&2; exit 1; }
  ln -sf "$found" "$cuda_root/lib/lib$1.so"
}
for l in cublas cublasLt nvrtc cudart; do link_lib "$l"; done
if [ ! -f "$cuda_root/lib/libcuda.so" ]; then
  say "building the stub libcuda.so"
  sys="$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*cudarc-0.9.*/src/driver/sys.rs' | sort | tail -n1)"
  [ -n "$sys" ] || { echo "gpu-build: cudarc's driver bindings not found (run cargo fetch)" >&2; exit 1; }
  # every entry point fails with CUDA_ERROR_UNKNOWN (999), except the two that name an error,
  # so that a program that loads the stub by mistake says so instead of panicking in a panic
  grep -o 'pub fn cu[A-Za-z0-9_]*' "$sys" | sed 's/pub fn //' | sort -u |
    grep -vx 'cuGetErrorString\|cuGetErrorName' |
    sed 's/.*/int &(void) { return 999; }/' >"$toolchain/libcuda_stub.c"
  cat >>"$toolchain/libcuda_stub.c" <<'STUB'
int cuGetErrorString(int e, const char **s) { (void)e; *s = "stub libcuda from gpu-build: no driver here"; return 0; }
int cuGetErrorName(int e, const char **s) { (void)e; *s = "CUDA_ERROR_STUB"; return 0; }
STUB
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cuda_root/lib/libcuda.so" "$toolchain/libcuda_stub.c"
fi

# 3. shims
cat >"$shims/nvidia-smi" <<EOF
#!/bin/sh
# stand-in for dfdx's build script: the compute capability of the target GPU
echo compute_cap
echo $cap
EOF
chmod +x "$shims/nvidia-smi"
export PATH="$shims:$(dirname "$nvcc"):$PATH"
export CUDA_ROOT="$cuda_root"
export LIBRARY_PATH="$cuda_root/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
say "nvcc: $(nvcc --version | tail -n1)"

if [ "${1:-}" = "--toolchain-only" ]; then
  say "toolchain ready: CUDA_ROOT=$cuda_root PATH=$shims:$(dirname "$nvcc"):\$PATH"
  exit 0
fi

# 4. the binaries
cd "$root"
mkdir -p "$carry/bin"
cargo build --release -p mae-cli --features cuda
cp target/release/mae "$carry/bin/mae"
test_binary() { # test_binary PACKAGE TEST: build it with cuda and copy it as bin/test-TEST
  cargo test --release -p "$1" --features cuda --test "$2" --no-run --message-format json |
    "$venv/bin/python" -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        shutil.copy(m["executable"], sys.argv[1])
        print("gpu-build: test binary", m["target"]["name"])
' "$carry/bin/test-$2"
  [ -x "$carry/bin/test-$2" ] || { echo "gpu-build: no test binary $2 of $1" >&2; exit 1; }
}
test_binary mae-core parity
test_binary mae-train gpu_step
# dfdx compiles a few kernels at run time (NVRTC) with include paths fixed at build time: the CUDA
# headers of this toolchain and dfdx's own out dir (cuda_utils.cuh). Carry both, with the paths
# they must appear at, for tools/gpu_check.sh.
dfdx_out="$(ls -td target/release/build/dfdx-*/out 2>/dev/null | while read -r d; do
  [ -f "$d/cuda_utils.cuh" ] && { echo "$root/$d"; break; }; done)"
[ -n "$dfdx_out" ] || { echo "gpu-build: dfdx's out dir (cuda_utils.cuh) not found" >&2; exit 1; }
stage="$toolchain/include-stage"
rm -rf "$stage" && mkdir -p "$stage/cuda" "$stage/dfdx-out"
cp -rL "$cuda_root/include/." "$stage/cuda/"
cp "$dfdx_out"/*.cuh "$stage/dfdx-out/"
tar -czf "$carry/include.tar.gz" -C "$stage" cuda dfdx-out
printf '%s cuda\n%s dfdx-out\n' "$cuda_root/include" "$dfdx_out" >"$carry/include-paths"
strip "$carry"/bin/* 2>/dev/null || true
# the binaries are mostly embedded PTX text: gzip takes them from 53 MB to about 14 (the carry
# travels with the working tree under a size limit); gpu_check.sh unpacks them
gzip -9 -f "$carry"/bin/mae "$carry"/bin/test-*
du -sh "$carry"
say "done: carry ${carry#"$root"/} and run: bash tools/gpu_check.sh"
