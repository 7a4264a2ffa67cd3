"""A mutation round on the test suite: one realistic one-line bug at a time, the tests run against each.

Each mutant is an exact string replacement in one file of xpmlp/ (asserted to match once). The
driver applies it, runs the most relevant test files with ``-x`` (a killed mutant ends fast), and
only for a survivor the wider ``--survivor-tests`` (default: tests/ but tests/compiler, one
process); then it restores the file. A mutant still running after ``--timeout`` seconds (both
stages together) is stopped, with every process it started, and counted as killed by the timeout.
A survivor named in :data:`EQUIVALENT` (with the reason no test can tell it apart) is counted as
equivalent, not as survived. Results go to a log (one line per mutant, appended) and a JSON file
beside it (a mutant run again replaces its result there).
Run from the repository root, in the environment to test:

    python tools/mutation.py --log /tmp/mutants.log [--only ID ...] [--only-prefix PREFIX ...]
        [--survivor-tests="-n 2 tests --ignore=tests/compiler"] [--timeout 900] [--check]

Mutants in the modules of a backend whose library is not installed are reported as not applicable.
Bytecode is not written (a restored file of the same size in the same second could reuse a mutant's).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: the tests of checks.as_rate (then their files), and of outputs that overflow
RATE_TESTS = [
    "test_mlp.py::test_rates_are_checked_in_the_models_dtype",
    "test_bad_input.py::test_a_rate_is_checked_in_the_models_dtype",
    "test_bad_input.py",
    "test_mlp.py",
]
OUTPUT_TESTS = [
    "test_bad_input.py::test_one_output_that_overflows_in_any_chunk_is_refused_and_counted",
    "test_bad_input.py::test_outputs_that_overflow_are_refused_by_predict_and_evaluate",
    "test_bad_input.py",
    "test_training.py",
]

# (id, file, old, new, the most relevant test files (or file.py::test), in order)
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
    ("data-csv-header-inverted", "data.py", "header = 0 if _numbers(first) else 1",
     "header = 1 if _numbers(first) else 0", ["test_data.py"]),
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
    ("cli-main-returns-metrics", "cli/__init__.py", "    run(argv, prog)\n", "    return run(argv, prog)\n",
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
    # issue 25 -- checks.py as_rate
    ("rate-cast-in-float64", "checks.py", "cast = float(host.asarray(number, dtype=dtype))",
     "cast = float(host.asarray(number, dtype=\"float64\"))", RATE_TESTS),
    ("rate-zero-refused", "checks.py", "if number > 0 and cast == 0:", "if cast == 0:",
     RATE_TESTS),
    ("rate-subnormal-is-zero", "checks.py", "if number > 0 and cast == 0:", "if number > 0 and cast < limits.tiny:",
     RATE_TESTS),
    ("rate-below-strict", "checks.py", "if below is not None and cast >= below:",
     "if below is not None and cast > below:",
     RATE_TESTS),
    ("rate-below-before-cast", "checks.py", "if below is not None and cast >= below:",
     "if below is not None and number >= below:", RATE_TESTS),
    ("rate-inf-as-nan", "checks.py", "if math.isinf(cast):", "if math.isnan(cast):",
     RATE_TESTS),
    ("rate-negative-accepted", "checks.py", "as_float(name, value, minimum=0.0, below=below)",
     "as_float(name, value, below=below)", RATE_TESTS),
    ("rate-cast-warns", "checks.py", "with host.errstate(over=\"ignore\", under=\"ignore\"):",
     "with host.errstate(under=\"ignore\"):",
     RATE_TESTS),
    # issue 25 -- data.py _grey_levels, _scaled
    ("grey-unsigned-not-integer", "data.py", "if x.dtype.kind in \"iu\" or bool(", "if x.dtype.kind in \"i\" or bool(",
     ["test_data.py"]),
    ("grey-whole-floats-are-fractions", "data.py", "(x != host.floor(x)).any()) else None",
     "(x != host.floor(x)).any()) else False", ["test_data.py"]),
    ("scaled-last-split-decides", "data.py", "grey_levels = bool(_grey_levels(splits[0][0]))",
     "grey_levels = bool(_grey_levels(splits[-1][0]))", ["test_data.py"]),
    ("scaled-undecided-is-grey", "data.py", "grey_levels = bool(_grey_levels(splits[0][0]))",
     "grey_levels = _grey_levels(splits[0][0]) is not False", ["test_data.py"]),
    ("scaled-undecided-refused", "data.py", "if own is not None and own != grey_levels:", "if own != grey_levels:",
     ["test_data.py"]),
    ("scaled-own-scale", "data.py", "x = scaled_grey_levels(x) if grey_levels else",
     "x = scaled_grey_levels(x) if own else", ["test_data.py"]),
    ("scaled-message-direction", "data.py", "            if not own:\n", "            if own:\n", ["test_data.py"]),
    ("scaled-255-refused", "data.py", "if x.size and x.max() > 1:", "if x.size and x.max() >= 1:",
     ["test_data.py", "test_cli.py"]),
    # issue 25 -- evaluation.py check_outputs, _eval_sums
    ("outputs-one-row-allowed", "evaluation.py", "    if not_finite:\n", "    if not_finite > 1:\n",
     OUTPUT_TESTS),
    ("eval-not-finite-last-chunk", "evaluation.py", "not_finite = not_finite + xp.sum(", "not_finite = xp.sum(",
     OUTPUT_TESTS),
    ("eval-loss-last-chunk", "evaluation.py", "loss_sum = loss_sum + xp.sum(", "loss_sum = xp.sum(",
     ["test_training.py::test_evaluate_in_chunks_equals_evaluate_in_one", "test_training.py", "test_sparse.py"]),
    ("eval-loss-unweighted", "evaluation.py", "xp.sum(loss if weights is None else weights * loss)", "xp.sum(loss)",
     ["test_sample_weight.py::test_a_weighted_validation_split_reports_its_weighted_loss_and_error",
      "test_sample_weight.py", "test_training.py"]),
    ("eval-in-train-mode", "evaluation.py",
     "with eval_mode(mlp), host.errstate(over=\"ignore\", invalid=\"ignore\"):  # outputs are checked: no NumPy "
     "warning\n        for rows in _chunks(data.n):",
     "with host.errstate(over=\"ignore\", invalid=\"ignore\"):  # outputs are checked: no NumPy "
     "warning\n        for rows in _chunks(data.n):", ["test_training.py", "test_batchnorm.py"]),
    ("eval-sparse-all-rows", "evaluation.py", "mlp.backend.asarray(host.arange(data.n)[rows])",
     "mlp.backend.asarray(host.arange(data.n))",
     ["test_sparse.py::test_evaluate_on_sparse_x_in_chunks_equals_evaluate_on_dense", "test_sparse.py"]),
    # issue 25 -- state.py FlatBuffer.checked
    ("checked-rank-only", "state.py", "if tuple(a.shape) != shape:", "if a.ndim != len(shape):", ["test_mlp.py"]),
    ("checked-transpose-never", "state.py", "transposed = tuple(a.shape) == shape[::-1] and",
     "transposed = tuple(a.shape) == shape and", ["test_mlp.py"]),
    ("checked-view-converted", "state.py", "if a is not view:", "if a is view:", ["test_mlp.py", "test_step.py"]),
    ("checked-error-type", "state.py", "raise type(exc)(", "raise ValueError(", ["test_mlp.py"]),
    ("checked-value-error-unnamed", "state.py", "except (TypeError, ValueError) as exc:", "except TypeError as exc:",
     ["test_mlp.py", "test_bad_input.py"]),
    # issue 25 -- mlp.py setters
    ("mlp-lr-rate-in-float64", "mlp.py", "self._lr = as_rate(\"lr\", value, self.dtype)",
     "self._lr = as_rate(\"lr\", value, \"float64\")", ["test_mlp.py", "test_bad_input.py"]),
    ("mlp-l2-as-float", "mlp.py", "self._l2 = as_rate(\"l2\", value, self.dtype)",
     "self._l2 = as_float(\"l2\", value, minimum=0.0)", ["test_mlp.py", "test_bad_input.py"]),
    ("mlp-momentum-rate-no-below", "mlp.py", "as_rate(\"momentum\", value, self.dtype, below=1.0)",
     "as_rate(\"momentum\", value, self.dtype)", ["test_mlp.py", "test_bad_input.py"]),
    # issue 25 -- io.py
    ("io-read-refusal-as-unreadable", "io.py", "except ValueError as exc:  # NumPy's refusal",
     "except KeyError as exc:  # NumPy's refusal",
     ["test_io.py::test_pickled_content_is_refused", "test_io.py"]),
    ("io-read-zip-errors-only", "io.py", "except Exception as exc:  # every other failure",
     "except (zipfile.BadZipFile, OSError) as exc:  # every other failure", ["test_io.py"]),
    ("io-load-folder-unchecked", "io.py", "    if path.is_dir():\n        raise ValueError(f\"{path} is a folder, not",
     "    if path.is_dir() and path.suffix:\n        raise ValueError(f\"{path} is a folder, not", ["test_io.py"]),
    ("io-load-no-expanduser", "io.py", "    path = Path(path).expanduser()\n    arrays = _read(path)",
     "    path = Path(path)\n    arrays = _read(path)", ["test_io.py"]),
    ("io-is-checkpoint-no-expanduser", "io.py", "zipfile.ZipFile(Path(path).expanduser())", "zipfile.ZipFile(path)",
     ["test_io.py", "test_cli.py"]),
    ("io-is-checkpoint-any-zip", "io.py", "return f\"{CONFIG_KEY}.npy\" in archive.namelist()", "return True",
     ["test_io.py", "test_cli.py"]),
    ("io-is-checkpoint-missing-raises", "io.py", "except (OSError, zipfile.BadZipFile):", "except zipfile.BadZipFile:",
     ["test_io.py", "test_cli.py"]),
    # issue 25 -- epoch.py program_key
    ("key-without-l2", "epoch.py", "for bn in mlp.bn_layers), mlp.l2,", "for bn in mlp.bn_layers),",
     ["test_step.py", "test_training.py"]),
    ("key-without-bn-alpha", "epoch.py", "(type(bn), bn.alpha, bn.eps)", "(type(bn), bn.eps)",
     ["test_step.py::test_a_model_of_another_batchnorm_alpha_gets_a_program_of_its_own", "test_step.py"]),
    ("key-without-batch-size", "epoch.py", "signature, n, batch_size, mlp.input_size", "signature, n, mlp.input_size",
     ["test_step.py", "test_training.py"]),
    ("key-subclass-known", "epoch.py", "if not all(type(a) is ACTIVATION_CLASSES.get(type(a).__name__)",
     "if not all(type(a).__name__ in ACTIVATION_CLASSES",
     ["test_step.py::test_a_users_activation_named_as_a_built_in_one_is_compiled_for_each_model", "test_step.py"]),
    # issue 25 -- backend/cupy.py nvidia_driver_found
    ("driver-first-library-only", "backend/cupy.py", "        except OSError:\n            continue",
     "        except OSError:\n            return False", ["test_backend.py"]),
    ("driver-always-found", "backend/cupy.py", "        return True\n    return False",
     "        return True\n    return True",
     ["test_backend.py"]),
    # issue 25 -- cli/runs.py
    ("say-broken-pipe-escapes", "cli/runs.py", "except BrokenPipeError:", "except ConnectionResetError:",
     ["test_cli.py"]),
    ("say-stdout-not-redirected", "cli/runs.py", "os.dup2(devnull, sys.stdout.fileno())", "pass",
     ["test_cli.py"]),
    ("lock-follows-links", "cli/runs.py", "os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW", "os.O_RDWR | os.O_CREAT",
     ["test_cli.py"]),
    ("lock-link-by-exists", "cli/runs.py", "if path.is_symlink():", "if path.exists():",
     ["test_cli.py::test_a_lock_file_that_is_a_dangling_symbolic_link_is_refused_as_one", "test_cli.py"]),
    ("overwrite-removes-only-checkpoint", "cli/runs.py", "if name != CHECKPOINT:", "if name == CHECKPOINT:",
     ["test_cli.py"]),
    ("overwrite-replaces-kept", "cli/runs.py", "            progress.replaces = []\n", "", ["test_cli.py"]),
    ("resume-always-told", "cli/runs.py", "told = args.backend is not None", "told = True", ["test_cli.py"]),
    # issue 25 -- cli/command.py
    ("sigterm-exits-130", "cli/command.py", "raise SystemExit(TERMINATED if terminated else INTERRUPTED)",
     "raise SystemExit(INTERRUPTED)", ["test_cli.py"]),
    ("data-folder-not-recorded", "cli/command.py", "    args.data = str(mnist_location(args.data, args.dataset)[0])  #",
     "    #", ["test_cli.py"]),
    ("out-new-folder-taken", "cli/command.py", "taken = out.exists() and not out.is_dir()", "taken = not out.is_dir()",
     ["test_cli.py"]),
    ("out-only-files-taken", "cli/command.py", "taken = out.exists() and not out.is_dir()", "taken = out.is_file()",
     ["test_cli.py::test_out_that_is_a_file", "test_cli.py"]),
    # issue 25 -- info.py
    ("info-device-error-escapes", "info.py", "except ValueError as exc:  # the library runs",
     "except TypeError as exc:  # the library runs", ["test_info.py::test_a_missing_xpmlp_device_is_flagged",
                                                       "test_info.py"]),
    ("info-data-missing-as-file", "info.py", "if not directory.exists():", "if not directory.is_dir():",
     ["test_info.py::test_an_xpmlp_data_that_is_no_readable_folder_is_said_in_one_line", "test_info.py"]),
]  # fmt: skip
_compiler = importlib.util.spec_from_file_location("compiler_mutants", Path(__file__).with_name("compiler_mutants.py"))
_compiler_mutants = importlib.util.module_from_spec(_compiler)
_compiler.loader.exec_module(_compiler_mutants)  # beside this file, imported as this file is (a script or a module)
MUTANTS += _compiler_mutants.COMPILER_MUTANTS

#: survivors no test can tell apart from the source, each with the reason
EQUIVALENT: dict[str, str] = {
    "checked-value-error-unnamed": "convert is Backend.asarray, which turns every failure to convert host data into a "
    "TypeError (and casting its own arrays raises none): no ValueError reaches this except on any backend",
    "key-without-batch-size": "the key's signature holds the batches input's shape (N // batch_size, batch_size): "
    "the batch size is in the key already",
    "say-stdout-not-redirected": "after the first EPIPE every later say fails alike and is caught again, and nothing "
    "is left buffered for the flush at exit: the run still exits 0 with nothing on stderr",
    "overwrite-replaces-kept": "later saves take the same way (.model.npz.new.tmp, then the rename) and remove the "
    "old run's files again, already gone: every save, and the folder, end the same",
    "cm-gemm-a-past-chunk": "chunks are multiples of tile_k, so a step's k never passes its chunk's end short of K",
    "cm-fuse-spread-any-phase": "what passes the later checks (a product, its tile work, loads) is of phase 0",
    "cm-fuse-grid-reads-tile": "tile work that reads the product is refused through the product; other tile work "
    "is recomputed from its loads by whoever reads it",
    "cm-chain-k-steps-unrolled": "the pragma only lets nvcc copy a chain stage's k-step loop: the same multiply-adds "
    "in the same order, a larger kernel",
    "cm-chain-block-stage-many-blocks": "a chained product is one tile of one split (tiles × splits = 1), and a block "
    "kernel chains only where it spreads nothing over GEMM_BLOCKS: either way a stage's reductions stay its block's",
}

OPTIONAL = {"backend/jax.py": "jax", "backend/torch.py": "torch"}

#: the survivor stage's default: every test but the compiler's (slow, and they test no mutated line)
SURVIVOR_TESTS = ["tests", "--ignore=tests/compiler"]


def pytest(args: list[str], timeout: float) -> tuple[bool | None, str]:
    """Whether ``python -m pytest -q -x ARGS`` passed (None: stopped after ``timeout`` s), and its last line.

    The run is a session of its own: at the timeout it is killed with every process it started
    (a CLI test's train.py would otherwise keep the output pipe open).
    """
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    # (not tests/test_mutation.py: it fails on any mutated source, since every mutant must match it once)
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *args,
               f"--ignore={ROOT / 'tests' / 'test_mutation.py'}"]  # fmt: skip
    with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:  # fmt: skip
        try:
            stdout, stderr = proc.communicate(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return None, f"timed out after {timeout:.0f} s (counted as killed)"
    lines = [line for line in stdout.splitlines() if line.strip()]
    failed = [line.split(" - ")[0] for line in lines if line.startswith(("FAILED", "ERROR"))]
    last = lines[-1] if lines else stderr.strip()[-200:]
    return proc.returncode == 0, f"{last} {failed[0]}" if failed else last


def test_path(name: str) -> str:
    """The test file called ``name`` wherever it lies under tests/ (they mirror the package's folders).

    ``file.py::test`` names one test of it: those run first, on their own (where a whole file is slow).
    """
    file, sep, rest = name.partition("::")
    return f"{next((ROOT / 'tests').rglob(file)).relative_to(ROOT)}{sep}{rest}"


def check(mutants: list[tuple]) -> None:
    """AssertionError unless ids are unique, each mutant matches its file once, and EQUIVALENT names mutants."""
    names = [m[0] for m in mutants]
    assert len(set(names)) == len(names), "mutant ids must be unique"
    assert set(EQUIVALENT) <= set(names), f"EQUIVALENT names no mutant: {sorted(set(EQUIVALENT) - set(names))}"
    for name, file, old, new, tests in mutants:
        count = (ROOT / "xpmlp" / file).read_text().count(old)
        assert count == 1, f"{name}: {old!r} occurs {count} times in {file}"
        assert old != new and tests, f"{name}: a mutant changes the source and names its tests"


def run(mutant: tuple, timeout: float, survivor_tests: list[str]) -> dict:
    """Apply ``mutant``, run its tests (then ``survivor_tests`` if they pass), restore the file: the result."""
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
        focused = [test_path(t) for t in tests if "::" in t]  # pytest would run them in file order
        passed, detail = pytest(focused, timeout) if focused else (True, "")
        stage = "relevant tests"
        if passed:
            files = [test_path(t) for t in tests if "::" not in t]
            passed, detail = pytest(files, timeout - (time.perf_counter() - started)) if files else (passed, detail)
        if passed:
            passed, detail = pytest(survivor_tests, timeout - (time.perf_counter() - started))
            stage = "survivor tests"
    finally:
        path.write_text(source)
    if passed is None:
        status, stage = "killed", f"timeout in the {stage}"
    elif passed:
        status = "equivalent" if name in EQUIVALENT else "survived"
    else:
        status = "killed"
    result = {"id": name, "file": file, "status": status, "by": stage, "detail": detail,
              "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    if name in EQUIVALENT:
        result["equivalent"] = EQUIVALENT[name]
    return result


def summary(results: list[dict]) -> str:
    """Killed of the mutants that are neither equivalent nor not applicable, and how many were each."""
    counted = [r for r in results if r["status"] in ("killed", "survived")]
    killed = sum(r["status"] == "killed" for r in counted)
    timeouts = sum(r["by"].startswith("timeout") for r in counted if r["status"] == "killed")
    equivalent = sum(r["status"] == "equivalent" for r in results)
    share = f" ({killed / len(counted):.1%})" if counted else ""
    return (f"killed {killed} / {len(counted)}{share}, {timeouts} of them by the timeout; {equivalent} equivalent, "
            f"{len(results) - len(counted) - equivalent} not applicable")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, help="log file (a .json beside it holds the results); needed to run")
    parser.add_argument("--only", nargs="*", help="run these mutants only")
    parser.add_argument("--only-prefix", nargs="*", help="run only the mutants whose id starts with one of these")
    parser.add_argument("--check", action="store_true", help="only check that every mutant matches once")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per mutant, both stages (default 900)")
    parser.add_argument(
        "--survivor-tests", type=shlex.split, default=SURVIVOR_TESTS,
        help="the survivors' wider run: pytest's arguments in one string (default: 'tests --ignore=tests/compiler')",
    )  # fmt: skip
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.only or m[0] in args.only]
    chosen = [m for m in chosen if not args.only_prefix or m[0].startswith(tuple(args.only_prefix))]
    check(MUTANTS)
    if args.check:
        print(f"{len(chosen)} mutants, each matching once ({len(EQUIVALENT)} marked equivalent)")
        return
    if args.log is None:
        parser.error("--log is needed to run the mutants")
    for cache in (ROOT / "xpmlp").rglob("__pycache__"):
        shutil.rmtree(cache)
    results = []
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with open(args.log, "a") as log:
        print(f"# {time.strftime('%F %T')} {sys.executable}: {len(chosen)} mutants, survivors then run "
              f"{' '.join(args.survivor_tests)}", file=log, flush=True)  # fmt: skip
        for mutant in chosen:
            result = run(mutant, args.timeout, args.survivor_tests)
            results.append(result)
            line = f"{result['status']:>14}  {result['id']:<32} {result.get('by', '')}: {result['detail']}"
            if "equivalent" in result:
                line += f" [equivalent: {result['equivalent']}]"
            print(line, file=log, flush=True)
            print(line, flush=True)
        print(f"# {summary(results)}", file=log, flush=True)
        print(summary(results))
    saved = args.log.with_suffix(".json")  # the log's earlier rounds too: a mutant run again replaces its result
    earlier = json.loads(saved.read_text()) if saved.exists() else []
    ran = {r["id"] for r in results}
    saved.write_text(json.dumps([r for r in earlier if r["id"] not in ran] + results, indent=1))


if __name__ == "__main__":
    main()
