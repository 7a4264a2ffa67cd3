"""A mutation round on the test suite: one realistic one-line bug at a time, the tests run against each.

Each mutant is an exact string replacement in one file of xpmlp/ (asserted to match once). The
driver applies it, runs the most relevant test files with ``-x`` (a killed mutant ends fast), and
only for a survivor the whole suite (``-x -n 2``; ``--wide PATH ...``: those tests); then it
restores the file. Results go to a log (one line per mutant) and a JSON file. Run from the repository
root, in the environment to test:

    python tools/mutation.py --log out/mutants.log [--only ID-or-PREFIX- ...] [--wide tests/compiler ...]

The compiler's mutants (ids ``cm-...``) live in tools/compiler_mutants.py and are appended to the table.

Mutants in the modules of a backend whose library is not installed are reported as not applicable.
Bytecode is not written (a restored file of the same size in the same second could reuse a mutant's).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (id, file, old, new, the most relevant test files, in order)
MUTANTS: list[tuple[str, str, str, str, list[str]]] = [
    # activations.py
    ("act-sigmoid-deriv-sign", "activations.py", "return s * (1.0 - s)", "return s * (1.0 + s)",
     ["test_activations.py", "test_mlp.py"]),
    ("act-tanh-deriv-square", "activations.py", "return 1.0 - t * t", "return 1.0 - t",
     ["test_activations.py", "test_mlp.py"]),
    ("act-relu-deriv-at-zero", "activations.py", "xp.astype(r > 0, r.dtype)", "xp.astype(r >= 0, r.dtype)",
     ["test_activations.py", "test_mlp.py"]),
    # loss.py
    ("loss-logsoftmax-axis", "loss.py", "xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))",
     "xp.log(xp.sum(xp.exp(shifted), axis=0, keepdims=True))", ["test_loss.py", "test_estimator.py"]),
    ("loss-shift-axis", "loss.py", "shifted = x - xp.max(x, axis=1, keepdims=True)\n        e = ",
     "shifted = x - xp.max(x, axis=0, keepdims=True)\n        e = ", ["test_loss.py", "test_mlp.py"]),
    ("loss-drop-total", "loss.py", "loss = total * xp.log(s)", "loss = xp.log(s)",
     ["test_loss.py", "test_mlp.py", "test_bad_input.py"]),
    ("loss-deriv-drop-total", "loss.py", "return self.sm * self._total - self.labels",
     "return self.sm - self.labels", ["test_loss.py", "test_mlp.py", "test_bad_input.py"]),
    # batchnorm.py
    ("bn-momentum-swapped", "batchnorm.py", "self.alpha * self.running + (1.0 - self.alpha) * xp.concat",
     "(1.0 - self.alpha) * self.running + self.alpha * xp.concat", ["test_batchnorm.py", "test_mlp.py"]),
    ("bn-inv-std-sign", "batchnorm.py", "(var + self.eps) ** -0.5", "(var + self.eps) ** 0.5",
     ["test_batchnorm.py", "test_mlp.py"]),
    ("bn-backward-m-minus-1", "batchnorm.py", "self.shards.rows(delta.shape[0]))",
     "(self.shards.rows(delta.shape[0]) - 1))", ["test_batchnorm.py", "test_mlp.py"]),
    ("bn-batch-of-one", "batchnorm.py", "x.shape[0] < 2:", "x.shape[0] < 1:",
     ["test_batchnorm.py", "test_bad_input.py", "test_mlp.py"]),
    ("bn-default-alpha", "batchnorm.py", "alpha: float = 0.9,", "alpha: float = 0.1,",
     ["test_batchnorm.py", "test_mlp.py", "test_torch.py"]),
    # checks.py
    ("checks-int-accepts-bool", "checks.py",
     "if isinstance(value, bool):\n        raise TypeError(f\"{name} must be an int",
     "if isinstance(value, str):\n        raise TypeError(f\"{name} must be an int",
     ["test_bad_input.py", "test_mlp.py"]),
    ("checks-float-below", "checks.py", "number >= below:", "number > below:", ["test_bad_input.py", "test_mlp.py"]),
    ("checks-float-accepts-inf", "checks.py", "if not math.isfinite(number):", "if math.isnan(number):",
     ["test_bad_input.py", "test_mlp.py"]),
    # mlp.py
    ("mlp-delta-not-mean", "mlp.py", "        delta = delta / m\n", "", ["test_mlp.py", "test_step.py"]),
    ("mlp-l2-half", "mlp.py", "[dw + self.l2 * w for", "[dw + 0.5 * self.l2 * w for",
     ["test_mlp.py", "test_step.py"]),
    ("mlp-stateless-step-mode", "mlp.py", "worker._lr, worker._momentum, worker.train_mode = lr, momentum, True",
     "worker._lr, worker._momentum = lr, momentum", ["test_step.py", "test_mlp.py", "test_training.py"]),
    ("mlp-zero-grads-db-like-dw", "mlp.py", "self.db = [xp.zeros_like(g) for g in self.db]",
     "self.db = [xp.zeros_like(g) for g in self.dW]", ["test_mlp.py", "test_step.py"]),
    ("mlp-state-extra-keys", "mlp.py", "if set(state) != set(own):", "if not set(own) <= set(state):",
     ["test_mlp.py", "test_io.py", "test_bad_input.py"]),
    ("mlp-momentum-one", "mlp.py", "as_float(\"momentum\", momentum, minimum=0.0, below=1.0)",
     "as_float(\"momentum\", momentum, minimum=0.0)", ["test_bad_input.py", "test_mlp.py"]),
    ("mlp-bn-on-output", "mlp.py", "minimum=0, maximum=len(hiddens))", "minimum=0, maximum=len(hiddens) + 1)",
     ["test_bad_input.py", "test_mlp.py"]),
    ("mlp-duplicate-act-off-by-one", "mlp.py", "for j in range(i):", "for j in range(i - 1):",
     ["test_bad_input.py", "test_mlp.py"]),
    # training.py
    ("train-order-seed-plus-epoch", "epoch.py", "default_rng((seed, epoch))", "default_rng(seed + epoch)",
     ["test_training.py", "test_seeds.py"]),
    ("train-eager-no-train-mode", "epoch.py", "    mlp.train()\n    loss_sum, errors", "    loss_sum, errors",
     ["test_training.py", "test_step.py"]),
    ("train-compiled-rest-inverted", "epoch.py", "if rest else carry", "if not rest else carry",
     ["test_training.py", "test_step.py"]),
    ("train-patience-off-by-one", "training.py", "history.epochs - history.best_epoch >= self.patience",
     "history.epochs - history.best_epoch > self.patience", ["test_training.py", "test_cli.py"]),
    ("train-resume-stopped-early", "training.py", "first = epochs if history.stopped_early else history.epochs",
     "first = history.epochs", ["test_training.py", "test_cli.py"]),
    ("train-fit-mode-not-restored", "training.py", "(mlp.train if was_training else mlp.eval)()", "mlp.train()",
     ["test_training.py", "test_step.py"]),
    ("train-predict-nan-only", "evaluation.py", "return ~xp.all(xp.isfinite(out), axis=1)",
     "return xp.any(xp.isnan(out), axis=1)", ["test_bad_input.py", "test_training.py"]),
    ("train-bad-rows-counts-columns", "epoch.py", "~host.isfinite(x).all(axis=1)", "~host.isfinite(x).all(axis=0)",
     ["test_bad_input.py", "test_training.py"]),
    ("train-stats-order", "training.py",
     "stats = (history.train_loss, history.train_error, history.val_loss, history.val_error)",
     "stats = (history.train_loss, history.val_loss, history.train_error, history.val_error)",
     ["test_training.py"]),
    ("train-stats-seed-dropped", "training.py", "batch_size=batch_size, seed=seed, progress=False",
     "batch_size=batch_size, seed=None, progress=False", ["test_training.py"]),
    # io.py
    ("io-version-unchecked", "io.py", "if config.get(\"version\") != VERSION:", "if config.get(\"version\") is None:",
     ["test_io.py"]),
    ("io-tmp-outside-folder", "io.py", "tempfile.mkstemp(dir=path.parent, prefix", "tempfile.mkstemp(prefix",
     ["test_io.py", "test_cli.py"]),
    ("io-negative-var-key", "io.py", "if key.endswith(\"running_var\")", "if key.endswith(\"running_mean\")",
     ["test_io.py"]),
    ("io-member-size-and", "io.py", "if claimed > info.file_size or info.file_size",
     "if claimed > info.file_size and info.file_size", ["test_io.py"]),
    ("io-bn-alpha-not-set", "io.py", "bn.alpha = as_float(f\"bn_alpha[{i}]\"", "as_float(f\"bn_alpha[{i}]\"",
     ["test_io.py"]),
    ("io-config-momentum-is-lr", "io.py", "\"momentum\": model.momentum,", "\"momentum\": model.lr,",
     ["test_io.py", "test_cli.py"]),
    # data.py
    ("data-label-ten", "data.py", "y.max() >= CLASSES", "y.max() > CLASSES", ["test_data.py"]),
    ("data-negative-pixels", "data.py", "host.isfinite(x).all() and x.min() >= 0", "host.isfinite(x).all()",
     ["test_data.py"]),
    ("data-scale-at-one", "data.py", "x.size and x.max() > 1.0)", "x.size and x.max() >= 1.0)",
     ["test_data.py", "test_cli.py"]),
    ("data-trailing-bytes", "data.py", "if len(raw) - header != expected:", "if len(raw) - header < expected:",
     ["test_data.py"]),
    ("data-csv-header-inverted", "data.py", "header = 0 if first.split", "header = 1 if first.split",
     ["test_data.py"]),
    # presets.py
    ("presets-schedule-off-by-one", "presets.py", "return lr * decay**epoch", "return lr * decay ** (epoch - 1)",
     ["test_cli.py", "test_estimator.py"]),
    ("presets-batch-of-one", "presets.py", "or n % batch_size == 1", "or n % batch_size == 0",
     ["test_cli.py", "test_training.py", "test_estimator.py"]),
    # cli/
    ("cli-nothing-to-train", "cli/runs.py", "if history.epochs >= epochs:", "if history.epochs > epochs:",
     ["test_cli.py"]),
    ("cli-overwrite-refused", "cli/runs.py", "elif found and not args.resume:", "if found and not args.resume:",
     ["test_cli.py"]),
    ("cli-resume-saved-unset", "cli/runs.py", "progress.saved = history.epochs\n    complete",
     "complete", ["test_cli.py"]),
    ("cli-main-returns-metrics", "cli/command.py", "    run(argv, prog or", "    return run(argv, prog or",
     ["test_cli.py"]),
    ("cli-model-epoch", "cli/runs.py",
     "kept = history.best_epoch if args.patience is not None and history.best_epoch else history.epochs",
     "kept = history.epochs", ["test_cli.py"]),
    # estimator.py
    ("est-labels-per-batch", "estimator.py", "else host.searchsorted(self.classes_, y)",
     "else host.unique(y, return_inverse=True)[1]", ["test_estimator.py", "test_estimator_contracts.py"]),
    ("est-schedule-off-by-one", "estimator.py", "self.lr_decay, epoch - started)",
     "self.lr_decay, epoch - started - 1)", ["test_estimator.py"]),
    ("est-l2-not-per-batch", "estimator.py", "model.l2 = float(self.alpha) / batch_size",
     "model.l2 = float(self.alpha)", ["test_estimator.py"]),
    ("est-tol-sign", "estimator.py", "worse = loss > self._best_loss - self.tol",
     "worse = loss > self._best_loss + self.tol", ["test_estimator.py"]),
    ("est-no-change-off-by-one", "estimator.py", "if self._no_improvement_count <= self.n_iter_no_change:",
     "if self._no_improvement_count < self.n_iter_no_change:", ["test_estimator.py"]),
    ("est-float32-default", "estimator.py", "(\"float32\" if input_dtype == host.float32 else \"float64\")",
     "\"float64\"", ["test_estimator.py", "test_estimator_contracts.py"]),
    # backend/numpy.py
    ("np-max-keepdims-axis", "backend/numpy.py", "out[:, None] if keepdims else out",
     "out[None, :] if keepdims else out",
     ["test_backend.py", "test_loss.py", "test_mlp.py"]),
    ("np-mean-count-axis", "backend/numpy.py", "count = x.shape[axis]", "count = x.shape[0]",
     ["test_backend.py", "test_batchnorm.py", "test_mlp.py"]),
    ("np-argmax-keepdims", "backend/numpy.py", "x.argmax(axis=axis, keepdims=keepdims)", "x.argmax(axis=axis)",
     ["test_backend.py", "test_training.py"]),
    # backend/_base.py
    ("base-rng-not-restored", "backend/_base.py", "            numpy.random.set_state(seeded)", "            pass",
     ["test_seeds.py", "test_backend.py"]),
    ("base-accepts-complex", "backend/_base.py",
     "if x.dtype.kind not in \"biuf\":\n            raise TypeError(f\"expected real",
     "if x.dtype.kind not in \"biufc\":\n            raise TypeError(f\"expected real",
     ["test_bad_input.py", "test_backend.py"]),
    ("base-dtype-name-prefix", "backend/_base.py", "name = text.rsplit(\".\", 1)[-1]", "name = text",
     ["test_backend.py", "test_mlp.py", "test_io.py"]),
    ("base-eq-ignores-device", "backend/_base.py",
     "(other.name, other.device) == (self.name, self.device)", "other.name == self.name",
     ["test_backend.py", "test_estimator.py"]),
    # backend/jax.py
    ("jax-precision-default", "backend/jax.py", "or \"highest\"", "or \"default\"", ["test_jax_backend.py"]),
    ("jax-x64-inverted", "backend/jax.py", "if name == \"float64\" and not self._x64:",
     "if name == \"float32\" and not self._x64:", ["test_jax_backend.py", "test_mlp.py"]),
    ("jax-fori-loop-from-one", "backend/jax.py", "fori_loop(0, count, body, carry, unroll=2)",
     "fori_loop(1, count, body, carry, unroll=2)", ["test_jax_backend.py", "test_training.py"]),
    # backend/torch.py
    ("torch-from-own-not-detached", "backend/torch.py", "self.xp.asarray(x.detach(), dtype",
     "self.xp.asarray(x, dtype", ["test_torch.py"]),
    ("torch-to-host-not-detached", "backend/torch.py", "return x.detach().cpu().numpy()", "return x.cpu().numpy()",
     ["test_torch.py"]),
    ("torch-cpu-build-hint", "backend/torch.py", "if self._module.version.cuda is None", "if self._module.version.cuda",
     ["test_torch.py"]),
]  # fmt: skip
from compiler_mutants import COMPILER_MUTANTS  # noqa: E402  (tools/ is the script's folder)

MUTANTS += COMPILER_MUTANTS

OPTIONAL = {"backend/jax.py": "jax", "backend/torch.py": "torch"}


def pytest(args: list[str], timeout: int) -> tuple[bool, str]:
    """Whether ``python -m pytest -q -x ARGS`` passed, and its last line."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *args]
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout} s (counted as killed)"
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    failed = [line.split(" - ")[0] for line in lines if line.startswith(("FAILED", "ERROR"))]
    last = lines[-1] if lines else done.stderr.strip()[-200:]
    return done.returncode == 0, f"{last} {failed[0]}" if failed else last


def test_path(name: str) -> Path:
    """The test file called ``name`` wherever it lies under tests/ (they mirror the package's folders)."""
    return next((ROOT / "tests").rglob(name)).relative_to(ROOT)


def run(mutant: tuple, timeout: int, wide: list[str] | None = None) -> dict:
    name, file, old, new, tests = mutant
    path = ROOT / "xpmlp" / file
    source = path.read_text()
    assert source.count(old) == 1, f"{name}: {old!r} occurs {source.count(old)} times in {file}"
    library = OPTIONAL.get(file)
    if library and importlib.util.find_spec(library) is None:
        return {"id": name, "file": file, "status": "not applicable", "detail": f"{library} is not installed"}
    started = time.perf_counter()
    try:
        path.write_text(source.replace(old, new))
        passed, detail = pytest([str(test_path(t)) for t in tests], timeout)
        stage = "relevant tests"
        if passed:
            passed, detail = pytest(wide or ["-n", "2"], timeout)
            stage = "wider run" if wide else "whole suite"
    finally:
        path.write_text(source)
    status = "survived" if passed else "killed"
    return {"id": name, "file": file, "status": status, "by": stage, "detail": detail,
            "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, required=True, help="log file (a .json beside it holds the results)")
    parser.add_argument("--only", nargs="*", help="run these mutants only")
    parser.add_argument("--wide", nargs="*", help="the survivors' run: these test paths (default: the whole suite)")
    parser.add_argument("--check", action="store_true", help="only check that every mutant matches once")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per pytest run")
    args = parser.parse_args()
    names = [m[0] for m in MUTANTS]
    assert len(set(names)) == len(names), "mutant ids must be unique"
    chosen = [
        m
        for m in MUTANTS
        if not args.only or any(m[0] == o or (o.endswith("-") and m[0].startswith(o)) for o in args.only)
    ]
    for name, file, old, _, _ in chosen:
        count = (ROOT / "xpmlp" / file).read_text().count(old)
        assert count == 1, f"{name}: {old!r} occurs {count} times in {file}"
    if args.check:
        print(f"{len(chosen)} mutants, each matching once")
        return
    for cache in (ROOT / "xpmlp").rglob("__pycache__"):
        shutil.rmtree(cache)
    results = []
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with open(args.log, "a") as log:
        print(f"# {time.strftime('%F %T')} {sys.executable}: {len(chosen)} mutants", file=log, flush=True)
        for mutant in chosen:
            result = run(mutant, args.timeout, args.wide)
            results.append(result)
            line = f"{result['status']:>14}  {result['id']:<32} {result.get('by', '')}: {result['detail']}"
            print(line, file=log, flush=True)
            print(line, flush=True)
        counted = [r for r in results if r["status"] != "not applicable"]
        killed = sum(r["status"] == "killed" for r in counted)
        summary = f"killed {killed} / {len(counted)} ({len(results) - len(counted)} not applicable)"
        print(f"# {summary}", file=log, flush=True)
        print(summary)
    args.log.with_suffix(".json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
