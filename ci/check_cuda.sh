#!/usr/bin/env bash
# Compile every CUDA kernel source with nvcc for each target architecture (no GPU needed).
#
# Warnings are errors. CUDA 13's nvcc no longer supports sm_70 (Volta): the script says so and
# compiles sm_75, the lowest architecture it supports, instead. Exits 0 with a message when
# nvcc is absent (the pytest suite skips the same check with a reason), 1 on any failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$here/kernels/cuda"
nvcc="${NVCC:-nvcc}"

if ! command -v "$nvcc" >/dev/null 2>&1; then
    echo "check_cuda: nvcc not found on PATH; CUDA compile check skipped"
    exit 0
fi

"$nvcc" --version | tail -n 2
supported="$("$nvcc" --list-gpu-arch | sed 's/compute_/sm_/')"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

status=0
for arch in sm_70 sm_75 sm_80 sm_90; do
    if ! grep -qx "$arch" <<<"$supported"; then
        lowest="$(sort -t_ -k2 -n <<<"$supported" | head -n 1)"
        echo "check_cuda: $arch is not supported by this nvcc (CUDA 13 dropped Volta); $lowest is compiled instead"
        continue
    fi
    pids=()
    for f in "$src"/*.cu; do
        name="$(basename "$f")"
        "$nvcc" -arch="$arch" --cubin -std=c++17 -Werror all-warnings -I"$src" "$f" \
            -o "$out/$name.$arch.cubin" >"$out/$name.$arch.log" 2>&1 &
        pids+=("$!:$name")
    done
    for entry in "${pids[@]}"; do
        if wait "${entry%%:*}"; then
            echo "ok    $arch ${entry#*:}"
        else
            echo "FAIL  $arch ${entry#*:}"
            cat "$out/${entry#*:}.$arch.log"
            status=1
        fi
    done
done
exit "$status"
