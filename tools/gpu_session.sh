#!/usr/bin/env bash
# A GPU run in at most 300 s of device time (issue 26), so that one rerun fits in the 15 minutes a task gets:
# the number first (tools/gpu_epoch.py: the compiled CuPy epoch timed directly, and equal to the eager one),
# then the CuPy tests, `XPMLP_BACKEND=cupy python train.py`, compute-sanitizer on a small compiled epoch, and
# the benchmark's GPU rows. Every step runs under `timeout -k` within its budget (BUDGETS below, the one place
# they are declared; tests/test_gpu_session.py checks they sum to at most 300 s). Everything is logged under
# $OUT as it goes, so a run cut off still returns what it measured (8 files at most come back):
#   summary.txt      the machine, gpu_epoch.py's lines, then one line per step
#   epoch.json       gpu_epoch.py's results, rewritten after each
#   tests.log  train.log  sanitizer.log  bench.log
#   epoch_time.json and .png (epoch_time.so-far.json while the benchmark runs or where it was cut off)
#
# Prepare once, on the machine with the checkout (../shared does not travel to the device):
#   mkdir -p .data/mnist && cp ../shared/data/mnist/*.gz .data/mnist/          # /.data/ is git-ignored
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       -d .whl array-api-compat==1.16.0 array-api-strict==2.6.1                 # the image lacks them
# Then call the device tool's `run` with command "bash tools/gpu_session.sh", carry [".data", ".whl"] and
# timeout_s 330.
#
# Settings (environment): GPU_BACKENDS, the backend of the epoch, train.py and sanitizer steps (default cupy;
# any other, e.g. GPU_BACKENDS=numpy, makes a dry run on the CPU: small sizes, the same steps); TESTS, the
# test paths of the CuPy step (default tests); CUPY_TESTS, its -k expression (default: the tests with cupy
# in their names, less the CPU-only NVRTC and host-emulation ones); WORKERS, pytest-xdist processes (default 8;
# 0: none); BENCH_ARGS (default --quick --phase gpu --skip pytorch-compile --no-tta); BUDGET_SCALE, a factor
# on every budget (default 1; for a dry run on a slow CPU).
set -uo pipefail

# step      seconds   what
BUDGETS="
setup       10        the carried wheels installed into /tmp/site
info        15        xpmlp info and nvidia-smi
epoch       60        tools/gpu_epoch.py: batch 100 (± chain) and 1000 timed, compiled = eager
tests       50        the CuPy tests
train       35        XPMLP_BACKEND=cupy python train.py
racecheck   25        compute-sanitizer --tool racecheck, one small compiled epoch
synccheck   15        compute-sanitizer --tool synccheck, the same
memcheck    20        compute-sanitizer --tool memcheck, the same
bench       70        benchmarks/epoch_time.py, the GPU rows
"
GRACE=3 # of a step's budget, the seconds between timeout's TERM and its KILL
SCALE=${BUDGET_SCALE:-1} # a dry run on a slow, shared CPU may stretch every budget by this factor

OUT=${OUT:-/tmp/xpmlp-gpu}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
BACKEND=${GPU_BACKENDS:-cupy}
BACKEND=${BACKEND%% *}
export PYTHONPATH="$PWD" XPMLP_DATA="${XPMLP_DATA:-$PWD/.data/mnist}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export XLA_PYTHON_CLIENT_PREALLOCATE=false # several pytest workers share the GPU; JAX would take 75% in each
summary="$OUT/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }

budget() { awk -v name="$1" '$1 == name { print $2 }' <<<"$BUDGETS"; }

# step NAME LOG COMMAND...: COMMAND under `timeout -k`, within NAME's budget, its output appended to LOG as it
# comes; one line to the summary. Sets $rc; counts the steps that failed in $failed.
failed=0
step() {
    local name=$1 log=$2 began=$SECONDS seconds
    seconds=$(($(budget "$name") * SCALE))
    shift 2
    echo "### $name (budget $seconds s): $*" >>"$log"
    timeout -k "$GRACE" "$((seconds - GRACE))" "$@" >>"$log" 2>&1
    rc=$?
    ((rc == 0)) || failed=$((failed + 1))
    local how="exit $rc"
    ((rc == 124 || rc == 137)) && how="TIMED OUT"
    note "$name ($how, $((SECONDS - began)) of $seconds s): $(grep -v '^\s*$' "$log" | tail -1 | cut -c1-150)"
}

if [ "$BACKEND" = cupy ]; then
    sizes=() train_args=() bench_sizes=()
else # a dry run on the CPU: the same steps, small
    sizes=(--samples 1000 --replays 1) train_args=(--epochs 1) bench_sizes=(--samples 1000 --epochs 1)
fi

if compgen -G ".whl/*.whl" >/dev/null; then
    step setup "$summary" python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    ((rc == 0)) && export PYTHONPATH="/tmp/site:$PWD"
fi
step info "$summary" bash -c 'python3 -m xpmlp info && if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; fi'

# 1. The number: the compiled epoch timed directly, then compared with the eager one (float64).
step epoch "$summary" python3 tools/gpu_epoch.py --backend "$BACKEND" "${sizes[@]}" --out "$OUT/epoch.json"

# 2. The CuPy tests (on a GPU the cupy-parametrized cases and the CuPy compile's run; elsewhere they skip).
parallel=(-n "${WORKERS:-8}")
python3 -c "import xdist" 2>/dev/null || parallel=()
per_test=(--timeout 60)
python3 -c "import pytest_timeout" 2>/dev/null || per_test=()
# shellcheck disable=SC2086 # TESTS is a list of paths
step tests "$OUT/tests.log" python3 -m pytest -q -p no:cacheprovider "${parallel[@]}" "${per_test[@]}" ${TESTS:-tests} \
    -k "${CUPY_TESTS:-cupy and not (nvrtc or through_the_driver)}"

# 3. train.py's default run on the backend (its own output says the accuracy and the training time).
run=$(mktemp -u -d /tmp/xpmlp-train.XXXXXX)
step train "$OUT/train.log" env XPMLP_BACKEND="$BACKEND" python3 train.py --quiet --no-plots --out "$run" "${train_args[@]}"
rm -rf "$run"

# 4. compute-sanitizer on one small compiled epoch, where it is installed.
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
for tool in racecheck synccheck memcheck; do
    if [ -n "$sanitizer" ]; then
        step "$tool" "$OUT/sanitizer.log" "$sanitizer" --tool "$tool" --error-exitcode 3 \
            python3 tools/gpu_epoch.py --small --backend "$BACKEND"
    else
        note "$tool: skipped, compute-sanitizer is not installed"
    fi
done

# 5. The benchmark's GPU rows (xpmlp on CuPy and JAX, PyTorch eager and in a CUDA graph, ...).
# shellcheck disable=SC2086 # BENCH_ARGS is a list of options
step bench "$OUT/bench.log" python3 benchmarks/epoch_time.py ${BENCH_ARGS:---quick --phase gpu --skip pytorch-compile --no-tta} \
    "${bench_sizes[@]}" --out "$OUT/epoch_time.json"
note "total: $SECONDS s; $failed steps failed"
grep -E '^\| ' "$OUT/bench.log" | grep -E '\| GPU \|' | cut -d'|' -f2,3,6,8,11 | tee -a "$summary"
((failed == 0))
