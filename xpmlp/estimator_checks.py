"""What :class:`~xpmlp.MLPClassifier` checks before it trains, in scikit-learn's words where it has them.

A parameter that scikit-learn's ``MLPClassifier`` also has is validated by scikit-learn's own
constraints (its ``InvalidParameterError``, a ValueError and a TypeError, with its message);
what xpmlp cannot honour, or only xpmlp has, is refused here, naming the parameter.
"""

from __future__ import annotations

from typing import Any

from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier as ScikitMLPClassifier
from sklearn.preprocessing import label_binarize
from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
from sklearn.utils.validation import _check_sample_weight, column_or_1d

from . import presets
from .backend import get_backend, host
from .checks import as_float, as_int

__all__ = [
    "ACTIVATIONS",
    "PARAMETER_CONSTRAINTS",
    "check_classes",
    "check_parameters",
    "check_targets",
    "check_warm_start",
    "hidden_sizes",
    "partial_fit_available",
    "training_batch_size",
    "validation_split",
    "weighted_split",
]

ACTIVATIONS = presets.SKLEARN_ACTIVATIONS  # scikit-learn's names → xpmlp's
LEARNING_RATES = ("exponential", "constant", "invscaling", "adaptive")
#: Parameters whose values scikit-learn's MLPClassifier accepts exactly as xpmlp does (its constraints check them).
SCIKIT_CHECKED = ("hidden_layer_sizes", "activation", "alpha", "batch_size", "power_t", "max_iter", "shuffle",
                  "random_state", "tol", "verbose", "warm_start", "momentum", "early_stopping", "validation_fraction",
                  "n_iter_no_change")  # fmt: skip
PARAMETER_CONSTRAINTS = {name: ScikitMLPClassifier._parameter_constraints[name] for name in SCIKIT_CHECKED}


def check_parameters(estimator: Any, incremental: bool) -> None:
    """Refuse what xpmlp cannot honour, naming the parameter, before anything changes."""
    estimator._validate_params()  # scikit-learn's constraints on SCIKIT_CHECKED, in its words
    if estimator.solver != "sgd":
        hint = " (xpmlp trains by momentum SGD only)" if estimator.solver in ("adam", "lbfgs") else ""
        raise ValueError(f"solver must be 'sgd', got {estimator.solver!r}{hint}")
    if estimator.nesterovs_momentum is not False:
        raise ValueError(
            f"nesterovs_momentum must be False: xpmlp's momentum is classical, got {estimator.nesterovs_momentum!r}"
        )
    if estimator.learning_rate not in LEARNING_RATES:
        raise ValueError(
            f"learning_rate must be one of {', '.join(map(repr, LEARNING_RATES))}, got {estimator.learning_rate!r}"
        )
    if estimator.init not in presets.INITS:
        raise ValueError(f"init must be one of {', '.join(map(repr, presets.INITS))}, got {estimator.init!r}")
    if estimator.early_stopping and incremental:
        raise ValueError("partial_fit does not support early_stopping=True")
    hiddens = hidden_sizes(estimator.hidden_layer_sizes)
    if estimator.bn_layers is not None and as_int("bn_layers", estimator.bn_layers) not in range(len(hiddens) + 1):
        raise ValueError(
            f"bn_layers must be an int in [0, {len(hiddens)}] (one per hidden layer), got {estimator.bn_layers}"
        )
    as_float("learning_rate_init", estimator.learning_rate_init, minimum=0.0)
    as_float("lr_decay", estimator.lr_decay, minimum=0.0, maximum=1.0)
    as_float("momentum", estimator.momentum, minimum=0.0, below=1.0)  # scikit-learn also takes 1: v never decays
    if estimator.early_stopping and estimator.validation_fraction == 0.0:
        raise ValueError("validation_fraction must be > 0 with early_stopping=True")


def partial_fit_available(solver: Any) -> bool:
    """True for ``solver="sgd"``; AttributeError otherwise, as scikit-learn's for "lbfgs" (in its words)."""
    if solver == "sgd":
        return True
    if solver == "lbfgs":
        raise AttributeError(f"partial_fit is only available for stochastic optimizers. {solver} is not stochastic.")
    raise AttributeError(
        f"partial_fit is only available for solver='sgd' (xpmlp trains by momentum SGD), not {solver!r}"
    )


def hidden_sizes(sizes: Any) -> list[int]:
    """``hidden_layer_sizes`` as a list of ints > 0: an int is one layer; 2.5, "64" or True are refused."""
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
        sizes = [sizes]
    sizes = [as_int(f"hidden_layer_sizes[{i}]", h) for i, h in enumerate(sizes)]
    if any(h <= 0 for h in sizes):
        raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")  # scikit-learn's words
    return sizes


def check_warm_start(estimator: Any) -> None:
    """Refuse parameters that the fitted network cannot continue with (those changed since it was built)."""
    model = estimator.model_
    fitted = {
        "hidden_layer_sizes": model.hiddens,
        "activation": type(model.activations[0]).__name__ if model.hiddens else None,
        "bn_layers": model.num_bn_layers,
        "backend": model.backend,
    }
    asked = {
        "hidden_layer_sizes": hidden_sizes(estimator.hidden_layer_sizes),
        "activation": presets.ACTIVATIONS[ACTIVATIONS[estimator.activation]].__name__ if model.hiddens else None,
        "bn_layers": len(model.hiddens) if estimator.bn_layers is None else estimator.bn_layers,
        "backend": get_backend(estimator.backend, estimator.device),
    }
    if estimator.dtype is not None:
        fitted["dtype"], asked["dtype"] = model.dtype, estimator.dtype
    changed = [name for name in fitted if fitted[name] != asked[name]]
    if changed:
        raise ValueError(
            f"warm_start continues the fitted network, but {', '.join(changed)} changed since it was fitted; "
            "set warm_start=False to train a new one"
        )


def check_targets(y: Any) -> tuple[Any, bool]:
    """``(y, multilabel)``: class labels (n,), or a multilabel indicator (n, L), as scikit-learn's MLPClassifier.

    A column (n, 1) is labels (with scikit-learn's DataConversionWarning); other 2-D targets are refused in
    the words of scikit-learn's LabelBinarizer.
    """
    if y.ndim == 2 and y.shape[1] == 1:
        y = column_or_1d(y, warn=True)
    check_classification_targets(y)
    if y.ndim == 2 and type_of_target(y) != "multilabel-indicator":
        raise ValueError("Multioutput target data is not supported with label binarization")
    return y, y.ndim == 2


def check_classes(estimator: Any, y: Any, classes: Any, warm_start: bool) -> None:
    """scikit-learn's checks (and words) of a call's labels ``y`` against the fitted ``classes_``.

    ``classes``: those a later ``partial_fit`` call passes (None on the first); ``warm_start``: a fit that
    continues the fitted network, which needs every one of its classes.
    """
    if classes is not None and not host.array_equal(host.unique(host.asarray(classes)), estimator.classes_):
        raise ValueError(f"`classes={classes!r}` is not the same as on last call to partial_fit, was: "
                         f"{estimator.classes_!r}")  # fmt: skip
    multilabel = y.ndim == 2
    if multilabel != estimator._multilabel:
        fitted = "a multilabel indicator" if estimator._multilabel else "class labels"
        raise ValueError(f"y must be {fitted}, as in the call that started the fit, got shape {y.shape}")
    found = unique_labels(y)  # a multilabel indicator's: range(L)
    if warm_start and not host.array_equal(found, estimator.classes_):
        raise ValueError(
            "warm_start can only be used where `y` has the same classes as in the previous call to fit. "
            f"Previously got {estimator.classes_}, `y` has {found}"
        )
    if host.setdiff1d(found, estimator.classes_).size:
        raise ValueError(
            f"`y` has classes not in `self.classes_`. `self.classes_` has {estimator.classes_}. 'y' has {found}."
        )


def validation_split(split: tuple, n_classes: int, fraction: float, seed: int) -> tuple[tuple, tuple]:
    """``(train, validation)``: early stopping's split of ``split`` (x, labels[, weights]), stratified.

    Stratified on the binarized targets, as scikit-learn stratifies two classes (a boolean column): a class
    of one member is refused in its words (``['True']``). scikit-learn does not stratify more classes, so
    where one of them has a single member, which cannot be stratified, the split is not stratified either.
    Sample weights split with their rows: the validation score is their weighted accuracy, as scikit-learn's.
    """
    labels = split[1]
    stratify = None if labels.ndim == 2 else label_binarize(labels, classes=host.arange(n_classes)).astype(bool)
    if n_classes > 2 and labels.ndim == 1 and host.bincount(labels, minlength=n_classes).min() < 2:
        stratify = None  # (nor does it stratify a multilabel indicator)
    parts = train_test_split(*split, test_size=fraction, random_state=seed, stratify=stratify)
    if parts[1].shape[0] < 2:
        raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of your dataset.")
    return tuple(parts[0::2]), tuple(parts[1::2])


def weighted_split(x: Any, labels: Any, sample_weight: Any) -> tuple[Any, Any, Any]:
    """``(x, labels, w)`` without the rows of weight 0, which drop out of training; w checked in scikit-learn's words.

    NaN or infinite weights, weights all 0, or a shape other than (n_samples,) are refused by scikit-learn's own
    check, in its words; negative weights too (which scikit-learn's MLPClassifier takes: a loss that rewards errors).
    """
    w = _check_sample_weight(sample_weight, x, dtype=host.float64, ensure_non_negative=True)
    kept = host.flatnonzero(w > 0)
    if kept.size == w.size:
        return x, labels, w
    return x[kept], labels[kept], w[kept]


def training_batch_size(estimator: Any, n: int, call: str) -> int:
    """``batch_size`` ("auto": min(200, n)) capped at n, grown while it would leave BatchNorm a batch of one.

    BatchNorm cannot train on a batch of one (its variance is 0): where every batch is one sample, the
    error says in one line how to train one sample at a time (bn_layers=0).
    """
    batch_size, bn = estimator.batch_size, estimator.model_.num_bn_layers
    size = min(200, n) if batch_size == "auto" else min(as_int("batch_size", batch_size, minimum=1), n)
    if bn and size == 1:
        what = "batch_size=1 gives it batches" if n > 1 else f"{call} got one training sample, a batch"
        raise ValueError(
            f"BatchNorm (bn_layers) cannot train on one sample and {what} of one: set bn_layers=0 to learn "
            "one sample at a time (online learning), or give it at least 2"
        )
    while bn and 1 < size < n and presets.leaves_batch_of_one(n, size):
        size += 1
    return size
