#!/usr/bin/env bash
# The GPU check, on a lent GPU machine (bare: python3 with torch+CUDA, no network):
# installs the wheels of .whl/ (made here by scripts/gpu-wheels.sh, carried along),
# runs the tests marked `cuda` (tests/gpu) on the GPU, then
# benchmarks/gpu_trajectory_bound.py, and prints a summary. Not yet run on a GPU: 2 to 4
# minutes on one H100 are expected; each part has its own time limit (tests 300 s,
# benchmark 140 s), under 8 minutes in all.
#
#   bash scripts/gpu-check.sh                                  # on the GPU machine
#   HOOKLENS_TEST_DEVICE=cpu PYTHON=.venv/bin/python bash scripts/gpu-check.sh   # here
#
# HOOKLENS_TEST_DEVICE=cpu runs the same tests on the CPU (and the benchmark small), to
# check the check where there is no GPU. A python that imports everything already (a
# venv of this repository) installs nothing. Logs go to $OUT when set (the device
# tool's folder that comes back), else to /tmp/gpu-check.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/site}
LOGS=${OUT:-/tmp/gpu-check}
DEVICE=${HOOKLENS_TEST_DEVICE:-cuda}
mkdir -p "$LOGS"
start=$SECONDS
status=0
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONDONTWRITEBYTECODE=1

needed="import transformer_lens, plotly, circuitsvis, beartype, datasets, hooklens"
if PYTHONPATH="$PWD" "$PYTHON" -c "$needed" 2>/dev/null; then
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    echo "== $PYTHON has every package: nothing installed"
else
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "gpu-check.sh: no wheels in .whl/: run scripts/gpu-wheels.sh where PyPI answers," \
            "and carry .whl to this machine" >&2
        exit 2
    fi
    echo "== installing $(ls .whl/*.whl | wc -l) wheels into $SITE"
    "$PYTHON" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 2
    export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
    PYTHONPATH="$PYTHONPATH" "$PYTHON" -c "$needed" || exit 2
fi

echo "== the machine"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader
"$PYTHON" - <<'PY' | tee "$LOGS/gpu-check-versions.txt"
import importlib.metadata as metadata
import os
import platform
import torch
names = ["torch", "transformers", "transformer-lens", "numpy", "huggingface-hub", "datasets",
         "pyarrow", "fsspec", "jaxtyping", "beartype", "plotly", "circuitsvis", "pytest"]
print(f"python {platform.python_version()}; " + ", ".join(
    f"{name} {metadata.version(name)}" for name in names))
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    print(f"cuda: {props.name}, capability {props.major}.{props.minor}, "
          f"{props.total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}, "
          f"nccl {'.'.join(map(str, torch.cuda.nccl.version()))}")
    # float32 tolerances assume IEEE float32 matmuls (torch's default), not TF32
    print(f"float32 matmuls: {torch.get_float32_matmul_precision()}, "
          f"allow_tf32 {torch.backends.cuda.matmul.allow_tf32}, "
          f"NVIDIA_TF32_OVERRIDE={os.environ.get('NVIDIA_TF32_OVERRIDE', 'unset')}")
else:
    print("cuda: torch sees no GPU")
PY
if [ "$DEVICE" = cuda ] && ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu-check.sh: torch sees no CUDA device (HOOKLENS_TEST_DEVICE=cpu checks the" \
        "check on the CPU)" >&2
    exit 2
fi

echo "== tests marked cuda, on $DEVICE"
tests_start=$SECONDS
timeout 300 "$PYTHON" -m pytest -m cuda tests/gpu -p no:cacheprovider -q -rfEs \
    2>&1 | tee "$LOGS/gpu-check-tests.txt"
tests_rc=${PIPESTATUS[0]}
tests_s=$((SECONDS - tests_start))
[ "$tests_rc" -eq 0 ] || status=1
# Skipped tests on a GPU mean the GPU was not used: a failure here.
if [ "$DEVICE" = cuda ] && grep -qE "[0-9]+ skipped" "$LOGS/gpu-check-tests.txt"; then
    echo "gpu-check.sh: tests skipped on a GPU machine" >&2
    status=1
fi

echo "== benchmark: trajectory statistics against the bare matmul bound, on $DEVICE"
bench_start=$SECONDS
if [ "$DEVICE" = cuda ]; then
    bench_args=${GPU_CHECK_BENCH_ARGS:-}
else  # a CPU: a small random model, to see that it runs
    bench_args=${GPU_CHECK_BENCH_ARGS:---random --n-layers 2 --tokens 32 --pos 32 --repeats 1}
fi
# shellcheck disable=SC2086  # the arguments are words
timeout 140 "$PYTHON" benchmarks/gpu_trajectory_bound.py --device "$DEVICE" $bench_args \
    2>&1 | tee "$LOGS/gpu-check-benchmark.txt"
bench_rc=${PIPESTATUS[0]}
bench_s=$((SECONDS - bench_start))
[ "$bench_rc" -eq 0 ] || status=1

echo
echo "== summary ($((SECONDS - start)) s in all)"
head -3 "$LOGS/gpu-check-versions.txt"
echo "tests (rc $tests_rc, ${tests_s} s): $(grep -E "(passed|failed|error)" \
    "$LOGS/gpu-check-tests.txt" | tail -1)"
echo "benchmark (rc $bench_rc, ${bench_s} s):"
grep -E "^(dtype|bfloat16|float32|float16) " "$LOGS/gpu-check-benchmark.txt"
echo "logs: $LOGS/gpu-check-*.txt"
if [ "$status" -eq 0 ]; then echo "GPU CHECK PASSED"; else echo "GPU CHECK FAILED"; fi
exit "$status"
