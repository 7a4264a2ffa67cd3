#!/usr/bin/env bash
# What a GPU must check, in one device call of under 10 minutes (issues 12 and 18): JAX's float32 on the GPU,
# the CuPy and CUDA tests, the rest of the suite, train.py on each GPU backend with its checkpoint crossing to
# the CPU, and the benchmark (CPU rows, then GPU rows apart). Each step has its own time budget and log; the
# steps together stop at $TOTAL_SECONDS. Logs and results go under $OUT (8 files at most come back):
#   summary.txt (what each step said, first the machine), jax.log, cupy.log, pytest.log, train.log, bench.log,
#   epoch_time.json and epoch_time.png.
#
# Prepare once, on the machine with the checkout (../shared does not travel to the device):
#   mkdir -p .data/mnist && cp ../shared/data/mnist/*.gz .data/mnist/          # /.data/ is git-ignored
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       -d .whl array-api-compat==1.16.0 array-api-strict==2.6.1                 # the image lacks them
# Then call the device tool's `run` with command "bash tools/gpu_session.sh" and carry [".data", ".whl"].
#
# Settings (environment): GPU_BACKENDS, the train.py runs as backend[:device] (default "cupy torch:cuda");
# SUITE, the test paths (default tests); WORKERS, pytest-xdist processes (default 8); CUPY_TESTS, the -k
# expression of the CuPy/CUDA step (default "cupy or cuda", where the CuPy compile's tests belong);
# BENCH_ARGS (default "--quick --no-tta"); TOTAL_SECONDS (default 560); JAX_SECONDS, CUPY_SECONDS,
# SUITE_SECONDS, TRAIN_SECONDS (each run), BENCH_SECONDS. On a CPU, GPU_BACKENDS="numpy torch:cpu" runs
# every step (the GPU-only tests skip themselves).
set -uo pipefail
OUT=${OUT:-/tmp/xpmlp-gpu}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl ||
        exit 1
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
# Several pytest workers share one GPU: JAX would reserve 75% of its memory in each process.
export XPMLP_DATA="${XPMLP_DATA:-$PWD/.data/mnist}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg XLA_PYTHON_CLIENT_PREALLOCATE=false
TOTAL_SECONDS=${TOTAL_SECONDS:-560}
WORKERS=${WORKERS:-8}
summary="$OUT/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
parallel=(-n "$WORKERS")
python3 -c "import xdist" 2>/dev/null || parallel=()  # pytest-xdist missing: one process

# step NAME BUDGET LOG COMMAND...: COMMAND under `timeout`, its output appended to LOG; the budget shrinks to
# what is left of TOTAL_SECONDS, and a step with less than 15 s left is skipped. Sets $rc.
step() {
    local name=$1 budget=$2 log=$3 left=$((TOTAL_SECONDS - SECONDS)) began=$SECONDS
    shift 3
    if ((left < 15)); then
        note "$name: skipped, the session's $TOTAL_SECONDS s are spent"
        rc=124
        return
    fi
    ((budget > left)) && budget=$left
    echo "### $name: $*" >>"$log"
    timeout "$budget" "$@" >>"$log" 2>&1
    rc=$?
    local how="exit $rc"
    ((rc == 124)) && how="TIMED OUT"
    note "$name ($how, $((SECONDS - began)) of $budget s): $(grep -v '^\s*$' "$log" | tail -1 | cut -c1-110)"
}

python3 -m xpmlp info >>"$summary" 2>&1
note "device: $(grep -A1 '^gpus:' "$summary" | tail -1 | sed 's/^ *//')"

# Step 1: JAX's float32 against NumPy float64 on JAX's device (TF32 would miss the 1e-5 tolerance), and what
# each precision gives on this device for one product.
step "jax float32 and float64 tolerance tests" "${JAX_SECONDS:-90}" "$OUT/jax.log" \
    python3 -m pytest -q -p no:cacheprovider "${parallel[@]}" tests/test_jax_backend.py \
    tests/test_mlp.py::test_backends_agree_with_numpy_float64 -k jax
step "jax matmul precision" 60 "$OUT/jax.log" python3 - <<'EOF'
import jax
import jax.numpy as jnp
import numpy as np

from xpmlp.backend import get_backend

backend = get_backend("jax")
rng = np.random.default_rng(0)
a, b = rng.normal(size=(100, 784)), rng.normal(size=(784, 64))
exact = a @ b
print(f"JAX on {backend.device} ({backend.device_name}); xpmlp asks for {backend.matmul_precision!r}")
for precision in ("default", "high", "highest"):
    product = jax.jit(lambda x, y: x @ y)
    with jax.default_matmul_precision(precision):
        got = np.asarray(product(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)), np.float64)
    print(f"float32 product at {precision!r}: relative error {np.linalg.norm(got - exact) / np.linalg.norm(exact):.1e}")
EOF

# Step 2: the CuPy and CUDA tests, the CuPy compile's among them (their names say cupy or cuda).
step "cupy/cuda tests (-k '${CUPY_TESTS:-cupy or cuda}')" "${CUPY_SECONDS:-120}" "$OUT/cupy.log" \
    python3 -m pytest -q -p no:cacheprovider "${parallel[@]}" ${SUITE:-tests} -k "${CUPY_TESTS:-cupy or cuda}"

# Step 3: the rest of the suite (with steps 1 and 2: all of it, every backend).
step "the rest of the suite" "${SUITE_SECONDS:-200}" "$OUT/pytest.log" \
    python3 -m pytest -q -p no:cacheprovider "${parallel[@]}" ${SUITE:-tests} -k "not (${CUPY_TESTS:-cupy or cuda})"

# Step 4: train.py on each GPU backend (default configuration), then its checkpoint predicts on the CPU.
for spec in ${GPU_BACKENDS:-cupy torch:cuda}; do
    backend=${spec%%:*}
    device=${spec#*:}
    [ "$device" = "$spec" ] && device=""
    run="$OUT/train-$backend"
    step "train.py --backend $backend ${device:+--device $device}" "${TRAIN_SECONDS:-60}" "$OUT/train.log" \
        python3 train.py --backend "$backend" ${device:+--device "$device"} --quiet --no-plots --out "$run"
    if [ "$rc" != 0 ]; then
        note "  its checkpoint: not checked (train.py did not finish)"
    else
        step "  its checkpoint" 60 "$OUT/train.log" python3 - "$run/model.npz" "$backend" "$device" <<'EOF'
import sys

import numpy as np

import xpmlp

path, backend, device = sys.argv[1], sys.argv[2], sys.argv[3] or None
_, _, (x, y) = xpmlp.load_mnist(download=False)
on_gpu = xpmlp.load(path, backend=backend, device=device)
on_cpu = xpmlp.load(path, backend="numpy")
same = np.array_equal(xpmlp.predict(on_gpu, x), xpmlp.predict(on_cpu, x))
print(f"checkpoint {path}: {backend} and numpy predict {'the same' if same else 'DIFFERENTLY'}; "
      f"test accuracy {np.mean(xpmlp.predict(on_cpu, x) == y):.2%}")
EOF
    fi
    rm -rf "$run" # $OUT returns at most 8 files
done

# Step 5: the benchmark: per configuration the CPU rows, then the GPU rows apart. A run cut short leaves what
# it measured in epoch_time.so-far.json (rewritten after each configuration).
# --quick: float32, BN, batch 100 and 1000, the targets' configurations.
step "benchmark ${BENCH_ARGS:---quick --no-tta}" "${BENCH_SECONDS:-200}" "$OUT/bench.log" \
    python3 benchmarks/epoch_time.py ${BENCH_ARGS:---quick --no-tta} --out "$OUT/epoch_time.json"
note "total: $SECONDS s"
grep -E '^\| (xpmlp|pytorch|jax|handwritten)' "$OUT/bench.log" | grep -E '\| GPU \|' | cut -d'|' -f2,3,6,8,11
