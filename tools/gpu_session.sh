#!/usr/bin/env bash
# Issue 12 in one device call: the suite on the GPU, train.py on CuPy and torch-CUDA, checkpoints
# crossing GPU <-> CPU, the benchmark; logs and results under $OUT, a short summary printed last.
#
# Prepare once, on the machine with the checkout (../shared does not travel to the device):
#   mkdir -p .data/mnist && cp ../shared/data/mnist/*.gz .data/mnist/          # /.data/ is git-ignored
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       -d .whl array-api-compat==1.16.0 array-api-strict==2.6.1                 # the image lacks them
# Then call the device tool's `run` with command "bash tools/gpu_session.sh" and carry [".data", ".whl"].
#
# GPU_BACKENDS lists the train.py runs as backend[:device] (default "cupy torch:cuda"); on a CPU,
# GPU_BACKENDS=numpy exercises the whole script (tried here: every step ran, 7 files in $OUT).
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
export XPMLP_DATA="${XPMLP_DATA:-$PWD/.data/mnist}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
summary="$OUT/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }

python3 -m xpmlp info >"$OUT/info.txt" 2>&1
note "device: $(grep -A1 '^gpus:' "$OUT/info.txt" | tail -1 | sed 's/^ *//')"

# Step 1: the whole suite; every backend-parametrized test runs its cupy and torch-cuda cases here.
timeout "${PYTEST_SECONDS:-210}" python3 -m pytest -q -p no:cacheprovider >"$OUT/pytest.log" 2>&1
note "pytest (exit $?): $(tail -1 "$OUT/pytest.log")"

# train.py on each GPU backend (default configuration), then its checkpoint predicts on the CPU.
for spec in ${GPU_BACKENDS:-cupy torch:cuda}; do
    backend=${spec%%:*}
    device=${spec#*:}
    [ "$device" = "$spec" ] && device=""
    run="$OUT/train-$backend"
    timeout 60 python3 train.py --backend "$backend" ${device:+--device "$device"} --quiet --no-plots \
        --out "$run" >>"$OUT/train.log" 2>&1
    note "train.py --backend $backend ${device:+--device $device} (exit $?): $(tail -1 "$OUT/train.log" | cut -c1-90)"
    python3 - "$run/model.npz" "$backend" "$device" >>"$OUT/train.log" 2>&1 <<'EOF'
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
    note "  $(tail -1 "$OUT/train.log")"
    rm -rf "$run"  # $OUT returns at most 8 files
done

# Step 2: the benchmark, every row this machine can run (CPU rows labelled with its CPU).
# --quick: float32, BN, batch 100 and 1000, the targets' configurations; the whole call stays under 10 minutes.
timeout "${BENCH_SECONDS:-150}" python3 benchmarks/epoch_time.py ${BENCH_ARGS:---quick} --no-tta \
    --out "$OUT/epoch_time.json" >"$OUT/bench.log" 2>&1
note "benchmark (exit $?): $OUT/epoch_time.json"
grep -E '^\| (xpmlp|pytorch|jax|handwritten)' "$OUT/bench.log" | grep -E '\| (float32) \| 100 \| yes' | cut -d'|' -f2-7
