#!/usr/bin/env bash
# ARM64 smoke job: the numba backend on an emulated ARM64 CPU (qemu-user), against NumPy.
#
# 1. a Debian arm64 root: `debootstrap --foreign` (its first stage needs no ARM code to run)
#    plus python3's packages unpacked with dpkg-deb; no binfmt, no chroot: qemu-aarch64-static
#    runs the root's python3 directly, with -L pointing its loader at the root;
# 2. numba, numpy (the versions of the x86 venv) and pytest as aarch64 wheels from PyPI, put
#    into the root's site directory by the host's pip (--platform, --target);
# 3. under qemu, with floating-point warnings as errors:
#    - tests/test_numba_gemm.py's kernel cases: GEMMs at awkward shapes, every layout and thread
#      grid, against float64 NumPy; the width/register facts; the micro-kernel's k loop in the
#      emitted assembly (24 NEON fmla a k step, no spills), also compiled for apple-m1 and
#      neoverse-v1;
#    - ci/aarch64_check.py: training on the numba backend equals the numpy backend.
#
# The emulated CPU is named (QEMU_CPU, default neoverse-n1: Graviton2-class, NEON only like
# Apple's cores). qemu's default `max` CPU offers SME, for which the arm64 OpenBLAS in NumPy's
# wheel picks its armv9sme kernels, and those raise spurious divide-by-zero flags under qemu
# 7.2 (NumPy then warns "divide by zero encountered in matmul" on a plain a @ a of random
# float32 data; results are right). That was the source of the warnings seen under qemu:
# deepcore's own buffers are not involved (tests/test_numba_gemm.py checks them with NaN-filled
# scratch and FP exceptions raised).
#
# Measured here from scratch (2 cores, other jobs running): 10.6 min in all: root 0.8 min,
# wheels 0.7 min, GEMM cases 6.5 min, assembly 0.8 min, training 1 min (mostly compiling
# under emulation; under heavy load it took twice as long, hence the generous limits).
# Needs root for debootstrap (CI runs as root) and the network to Debian's mirror and PyPI.
#   VENV=.venv             the x86 venv (ci/test.sh): its pip fetches the wheels, its numba
#                          and numpy versions are pinned
#   AARCH64_WORK=<tmpdir>  where the root, wheels and caches go (removed at the end unless set)
#   QEMU_CPU=neoverse-n1   the emulated CPU
#   DEBIAN_MIRROR=http://deb.debian.org/debian
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
export QEMU_CPU="${QEMU_CPU:-neoverse-n1}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm  # python3.11, as manylinux wheels for cp311 expect

fail() {
  echo "ci/aarch64.sh: FAILED: $*" >&2
  exit 1
}
t_start=$SECONDS
step() { echo "== aarch64 [$((SECONDS - t_start)) s]: $*"; }

[ -x "$PY" ] || fail "no venv at $VENV (run ci/test.sh first, or set VENV)"
if [ -n "${AARCH64_WORK:-}" ]; then
  WORK="$AARCH64_WORK"
  mkdir -p "$WORK"
else
  WORK="$(mktemp -d /tmp/deepcore-aarch64.XXXXXX)"
  trap 'rm -rf "$WORK"' EXIT
fi
ROOT="$WORK/root"

step "host tools (qemu-user-static, debootstrap)"
if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
  [ "$(id -u)" = 0 ] || fail "qemu-user-static and debootstrap are missing and this is not root"
  timeout 600 apt-get update -qq || fail "apt-get update"
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends \
    qemu-user-static debootstrap >/dev/null || fail "apt-get install qemu-user-static debootstrap"
fi
qemu-aarch64-static -version | head -1

step "Debian $SUITE arm64 root (debootstrap --foreign) in $ROOT"
if [ ! -x "$ROOT/usr/bin/python3" ]; then
  ok=0
  for attempt in 1 2; do
    rm -rf "$ROOT"
    if timeout 900 debootstrap --foreign --arch=arm64 --variant=minbase --include=python3 \
      "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
      ok=1
      break
    fi
    echo "debootstrap attempt $attempt failed; last lines:" >&2
    tail -5 "$WORK/debootstrap.log" >&2
  done
  [ "$ok" = 1 ] || fail "debootstrap (log: $WORK/debootstrap.log)"
  # The first stage unpacks only the required packages; python3 and its libraries are
  # downloaded: unpack them too (no maintainer scripts are needed to run python3).
  for deb in "$ROOT"/var/cache/apt/archives/*.deb; do
    dpkg-deb -x "$deb" "$ROOT" || fail "dpkg-deb -x $deb"
  done
fi
PYARM=("$ROOT/usr/bin/python3")
qemu() {  # qemu() SECONDS ARGS...: the root's python3 under qemu-user, killed after SECONDS
  local limit="$1"
  shift
  # OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE name x86 cores on this machine: meaningless for ARM.
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH="$WORK/src:$WORK/site" NUMBA_CACHE_DIR="$WORK/numba" \
    DEEPCORE_CACHE_DIR="$WORK/cache" HOME="$WORK" \
    timeout -k 30 "$limit" qemu-aarch64-static -L "$ROOT" "${PYARM[@]}" "$@"
}
qemu 120 -c "import platform, sys; print(platform.machine(), sys.version.split()[0])" \
  || fail "the arm64 python3 does not start under qemu-aarch64-static"

step "aarch64 wheels (numba, numpy as in $VENV; pytest)"
rm -rf "$WORK/site"
read -r NUMBA_V NUMPY_V < <("$PY" -c "import numba, numpy; print(numba.__version__, numpy.__version__)")
timeout 900 "$PY" -m pip install --quiet --disable-pip-version-check --target "$WORK/site" \
  --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
  --platform manylinux2014_aarch64 --python-version 3.11 --implementation cp --abi cp311 \
  --only-binary=:all: "numba==$NUMBA_V" "numpy==$NUMPY_V" "threadpoolctl>=3.1" "tqdm>=4.60" \
  "pytest>=8" || fail "pip could not fetch the aarch64 wheels (numba==$NUMBA_V numpy==$NUMPY_V)"

step "deepcore sources (deepcore/, kernels/ as deepcore.kernels, tests/)"
rm -rf "$WORK/src"
mkdir -p "$WORK/src"
cp -rp "$REPO/deepcore" "$WORK/src/deepcore"  # -p: Numba's cache is keyed on source mtimes
cp -rp "$REPO/kernels" "$WORK/src/deepcore/kernels"
cp -rp "$REPO/tests" "$REPO/ci" "$WORK/src/"
cd "$WORK/src"  # python -c and -m put the working directory first on sys.path
qemu 300 -c "
import numpy as np, numba
from threadpoolctl import threadpool_info
from deepcore.kernels.numba.simd import TARGET
blas = [(p['internal_api'], p['architecture']) for p in threadpool_info()]
print('numba', numba.__version__, 'numpy', np.__version__, blas)
print('target:', TARGET.describe())
" || fail "numba or deepcore does not import under qemu"

# The float32 cases only (collected on the host, same files): every kernel compiles under
# emulation (LLVM itself runs emulated, ~10x slower) and float64 would double that; the x86
# runs cover float64.
GEMM_CASES="kernel_matches or beta_zero or epilogue or dot_rows or choose_grid or simd"
GEMM_CASES="$GEMM_CASES or agree_with or register_fmas or fp_flags"
mapfile -t CASES < <(cd "$REPO" && "$PY" -m pytest -q -p no:cacheprovider --collect-only \
  -o addopts= tests/test_numba_gemm.py -k "$GEMM_CASES" | grep '::' | grep -v 'float64\]')
[ "${#CASES[@]}" -ge 30 ] || fail "only ${#CASES[@]} GEMM cases collected: ${CASES[*]}"
step "${#CASES[@]} GEMM cases under qemu ($QEMU_CPU, Numba's own target)"
qemu 3000 -m pytest -q -p no:cacheprovider -o addopts= -W error::RuntimeWarning "${CASES[@]}" \
  || fail "GEMM cases (exit $?)"

for cpu in apple-m1 neoverse-v1; do
  step "micro-kernel assembly compiled for $cpu"
  QEMU_CPU=max NUMBA_CPU_NAME="$cpu" NUMBA_CPU_FEATURES="" \
    qemu 900 -m pytest -q -p no:cacheprovider -o addopts= \
    tests/test_numba_gemm.py -k "register_fmas or agree_with" || fail "assembly for $cpu"
done

step "training on the numba backend against the numpy backend"
qemu 1800 ci/aarch64_check.py || fail "training check (exit $?)"
step "passed"
