#!/usr/bin/env bash
# The GPU check of the CUDA issue under the name the issue gives it; the script is
# tools/gpu_check.sh (build its inputs first with `cargo xtask gpu-build`).
exec bash "$(dirname "$0")/../tools/gpu_check.sh" "$@"
