#!/usr/bin/env bash
# The Numba test files again, with the kernels compiled for x86 targets other than this host's
# CPU: haswell (AVX2 + FMA, 16 vector registers: most x86 laptops) and the x86-64 baseline
# (SSE2 only, no FMA: old CPUs and VMs that expose a baseline CPU model). Each run gets its own
# Numba cache. Runs after ci/test.sh and reuses its venv.
#   VENV=.venv      the venv ci/test.sh made
#   TARGETS="haswell x86-64"   the NUMBA_CPU_NAME values to run
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
TESTS=(tests/test_numba_gemm.py tests/test_numba_kernels.py)
# Deselected: the test that itself compiles for these targets in subprocesses (ci/test.sh ran it).

if [ ! -x "$PY" ]; then
  echo "ci/targets.sh: no venv at $VENV (run ci/test.sh first)" >&2
  exit 1
fi
if [ "$(uname -m)" != "x86_64" ]; then
  echo "ci/targets.sh: not an x86-64 host ($(uname -m)): other x86 targets skipped"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for cpu in ${TARGETS:-haswell x86-64}; do
  if [ "$cpu" = haswell ] && ! { grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; }; then
    echo "== $cpu: skipped (this CPU cannot run AVX2 + FMA code)"
    continue
  fi
  echo "== pytest, Numba kernels compiled for NUMBA_CPU_NAME=$cpu"
  # Empty NUMBA_CPU_FEATURES: the named CPU's own features, not this host's.
  NUMBA_CPU_NAME="$cpu" NUMBA_CPU_FEATURES="" NUMBA_CACHE_DIR="$work/numba-$cpu" \
    DEEPCORE_CACHE_DIR="$work/cache-$cpu" \
    "$PY" -c "from deepcore.kernels.numba.simd import TARGET; print('   ', TARGET.describe())"
  NUMBA_CPU_NAME="$cpu" NUMBA_CPU_FEATURES="" NUMBA_CACHE_DIR="$work/numba-$cpu" \
    DEEPCORE_CACHE_DIR="$work/cache-$cpu" \
    timeout 1800 "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}" \
    -k "not on_other_x86_targets" || {
      rc=$?
      echo "ci/targets.sh: the Numba tests failed when compiled for $cpu (exit $rc)" >&2
      exit "$rc"
    }
done
