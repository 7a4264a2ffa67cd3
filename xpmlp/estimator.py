"""A scikit-learn estimator over :class:`~xpmlp.MLP`: a drop-in for scikit-learn's own ``MLPClassifier``.

Not a second implementation: ``fit`` builds an :class:`~xpmlp.MLP` and trains it
with :func:`~xpmlp.fit`; the trained model is ``model_`` (``xpmlp.save`` writes it).
Parameters scikit-learn's ``MLPClassifier`` also has mean what they mean there
(its ``solver="sgd"`` with ``nesterovs_momentum=False``: the same update
v ← μ·v − η·grad; p ← p + v); one that xpmlp cannot honour is refused at ``fit``,
never ignored. NumPy goes in and NumPy comes out, whichever device trains.
Needs scikit-learn (``pip install 'xpmlp[sklearn]'``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from . import presets
from .backend import get_backend, host
from .checks import as_float, as_int
from .evaluation import check_outputs
from .loss import log_softmax
from .mlp import MLP
from .presets import DEFAULTS
from .training import EarlyStopping, History, check_inputs, eval_mode, fit

__all__ = ["MLPClassifier"]

ACTIVATIONS = presets.SKLEARN_ACTIVATIONS  # scikit-learn's names → xpmlp's
LEARNING_RATES = ("exponential", "constant", "invscaling", "adaptive")
SMALLEST_ADAPTIVE_RATE = 1e-6  # "adaptive" stops instead of going below (scikit-learn's bound)


class MLPClassifier(ClassifierMixin, BaseEstimator):
    """Softmax cross-entropy MLP trained by momentum SGD, with BatchNorm, on any xpmlp backend.

    Parameters
    ----------
    hidden_layer_sizes
        Units of each hidden layer: an int or a sequence of ints (2.5 or "64" are refused).
    activation
        ``"relu"``, ``"logistic"`` (sigmoid), ``"tanh"`` or ``"identity"``.
    solver
        Only ``"sgd"`` (momentum SGD); scikit-learn's ``"adam"`` and ``"lbfgs"`` are refused.
    alpha
        L2 penalty, as scikit-learn adds it: each batch's objective gains 0.5·alpha·Σᵢ‖Wᵢ‖²/batch_size,
        each weight gradient alpha·Wᵢ/batch_size (biases and BatchNorm's γ, β are not penalised); it is the
        model's ``l2`` = alpha / batch_size (scikit-learn divides by a last, partial batch's own size).
    batch_size
        Mini-batch size, or ``"auto"``: min(200, n_samples). Capped at n_samples; if it would
        leave BatchNorm a last batch of one example, it grows by one until not.
    learning_rate
        The per-epoch schedule of the rate η (each epoch trains at one rate):
        ``"exponential"`` (xpmlp's): η = learning_rate_init · lr_decay^k in epoch k (0-based) of a fit;
        ``"constant"``: η = learning_rate_init;
        ``"invscaling"``: η = learning_rate_init / (t + 1)^power_t, t the samples seen before the epoch;
        ``"adaptive"``: η = learning_rate_init, divided by 5 each time ``n_iter_no_change`` + 1 epochs in a
        row fail to improve by ``tol``; training stops once η would fall to 1e-6 or below.
        Every fit starts again at learning_rate_init (as scikit-learn's new optimizer does);
        ``partial_fit`` keeps the current rate, which only "invscaling" (by samples) and "adaptive" change.
    learning_rate_init, lr_decay, power_t
        The schedules' constants; ``lr_decay`` is read by "exponential" only, ``power_t`` by "invscaling" only.
    momentum
        μ of the update v ← μ·v − η·grad; p ← p + v.
    nesterovs_momentum
        Only False: xpmlp's momentum is classical (True is refused).
    max_iter
        Most epochs (passes over the training data) of a fit.
    shuffle
        Shuffle the training rows each epoch (seeded by ``random_state``); False: their given order.
    tol, n_iter_no_change
        Stop when, ``n_iter_no_change`` + 1 epochs in a row, the training loss (with ``early_stopping``:
        the validation accuracy) has not improved on the best so far by ``tol`` (scikit-learn's rule).
    early_stopping, validation_fraction
        Hold out a stratified ``validation_fraction`` of the training data; the model kept at the end is
        the epoch of lowest validation loss (:func:`xpmlp.fit` restores it, as ``train.py`` does).
    warm_start
        ``fit`` continues the fitted network (same architecture and classes) for ``max_iter`` more epochs,
        with a fresh optimizer (zero velocities, the initial rate), as scikit-learn does.
    random_state
        Seeds the initial weights, the shuffles and the validation split (an int, a RandomState or None).
    verbose
        Print the loss after each epoch.
    bn_layers
        Hidden layers, from the input, with BatchNorm; None: all of them.
    init
        ``"he"`` (N(0, 2/fan_in)) or ``"normal"`` (N(0, 1), as in HW1).
    backend, device
        Where to train (see :func:`xpmlp.get_backend`); default ``$XPMLP_BACKEND``/NumPy.
    dtype
        ``"float32"`` or ``"float64"``; None: float32 for float32 input, else float64.

    Attributes
    ----------
    model_ : MLP
        The trained network.
    classes_ : ndarray
        The class labels, of any type scikit-learn accepts.
    n_features_in_, feature_names_in_
        As scikit-learn defines them.
    coefs_, intercepts_ : list of ndarray
        Host copies of each layer's weights (n_in, n_out) and biases (n_out,), scikit-learn's shapes.
        With BatchNorm layers they are not the whole network: γ, β and the running statistics are in ``model_``.
    n_layers_, n_outputs_, out_activation_
        Layers counting input and output (len(hidden_layer_sizes) + 2), output units (one per class,
        also for two classes), ``"softmax"``.
    loss_, best_loss_, loss_curve_
        Mean training cross-entropy of the last epoch, the lowest of a run (None with ``early_stopping``),
        and of each epoch; without ``alpha``'s penalty term, which scikit-learn's include.
    t_ : int
        Training samples seen.
    validation_scores_ : list of float or None
        Validation accuracy of each epoch when ``early_stopping``.
    best_validation_score_ : float or None
        The validation accuracy of the kept epoch when ``early_stopping``.
    n_iter_ : int
        Epochs trained by the last call of ``fit`` (``partial_fit``: 1).
    history_ : History
        :func:`xpmlp.fit`'s per-epoch statistics, over every call.
    """

    def __init__(
        self,
        hidden_layer_sizes: int | Sequence[int] = DEFAULTS["hiddens"],
        activation: str = DEFAULTS["activation"],
        *,
        solver: str = "sgd",
        alpha: float = 0.0,
        batch_size: int | str = DEFAULTS["batch_size"],
        learning_rate: str = "exponential",
        learning_rate_init: float = DEFAULTS["lr"],
        lr_decay: float = DEFAULTS["lr_decay"],
        power_t: float = 0.5,
        max_iter: int = DEFAULTS["epochs"],
        shuffle: bool = True,
        random_state: Any = None,
        tol: float = 1e-4,
        verbose: bool = False,
        warm_start: bool = False,
        momentum: float = DEFAULTS["momentum"],
        nesterovs_momentum: bool = False,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 10,
        bn_layers: int | None = None,
        init: str = DEFAULTS["init"],
        backend: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.lr_decay = lr_decay
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.bn_layers = bn_layers
        self.init = init
        self.backend = backend
        self.device = device
        self.dtype = dtype

    def fit(self, X: Any, y: Any) -> MLPClassifier:
        """Train on ``X`` (n_samples, n_features) and labels ``y``: a new network, or with warm_start the fitted one."""
        return self._fit(X, y, classes=None, incremental=False)

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> MLPClassifier:
        """One pass over ``X``, ``y`` at the current rate; the first call needs ``classes`` (all labels to come)."""
        return self._fit(X, y, classes=classes, incremental=True)

    def predict_proba(self, X: Any) -> Any:
        """Softmax probabilities (n_samples, n_classes), columns ordered as ``classes_``; eval mode."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=(host.float64, host.float32), reset=False)
        model = self.model_
        X = check_inputs(X, model.input_size, "predict", model.dtype)  # 1e39 is infinite in float32
        with eval_mode(model), host.errstate(over="ignore", invalid="ignore"):  # checked below: no NumPy warning
            proba = model.backend.to_host(model.backend.xp.exp(log_softmax(model.forward(X))))
        proba = host.asarray(proba, dtype=host.float64)
        check_outputs(model, host.count_nonzero(~host.isfinite(proba).all(axis=1)), len(proba), "predict")
        return proba

    def predict(self, X: Any) -> Any:
        """The most probable class of each row, as a label from ``classes_``."""
        proba = self.predict_proba(X)
        return self.classes_[host.argmax(proba, axis=1)]

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    def _fit(self, X: Any, y: Any, classes: Any, incremental: bool) -> MLPClassifier:
        """fit and partial_fit: every check first; a failed first call leaves the estimator as it was."""
        self._check_parameters(incremental)
        first = not hasattr(self, "model_") or (not incremental and not self.warm_start)
        before = dict(vars(self))
        try:
            X, y = validate_data(self, X, y, dtype=(host.float64, host.float32), reset=first)
            check_classification_targets(y)
            if first:
                if incremental and classes is None:
                    raise ValueError("classes must be passed on the first call to partial_fit")
                self._start(X, y if classes is None else classes)
            elif classes is not None and not host.array_equal(host.unique(host.asarray(classes)), self.classes_):
                raise ValueError(f"classes={classes!r} differs from the first call's classes {self.classes_!r}")
            unseen = host.setdiff1d(y, self.classes_)
            if unseen.size:
                raise ValueError(f"y holds labels {unseen!r} that are not in classes {self.classes_!r}")
            if not first and not incremental:
                self._check_warm_start(y)
            labels = host.searchsorted(self.classes_, y)
            self._train(X, labels, 1 if incremental else self.max_iter, incremental)
        except BaseException:
            if first:  # nothing of a failed start stays behind: the estimator is as it was
                vars(self).clear()
                vars(self).update(before)
            raise
        return self

    def _check_parameters(self, incremental: bool) -> None:
        """Refuse what xpmlp cannot honour, naming the parameter, before anything changes."""
        if self.solver != "sgd":
            hint = " (xpmlp trains by momentum SGD only)" if self.solver in ("adam", "lbfgs") else ""
            raise ValueError(f"solver must be 'sgd', got {self.solver!r}{hint}")
        if self.nesterovs_momentum is not False:
            raise ValueError(
                f"nesterovs_momentum must be False: xpmlp's momentum is classical, got {self.nesterovs_momentum!r}"
            )
        if self.learning_rate not in LEARNING_RATES:
            raise ValueError(
                f"learning_rate must be one of {', '.join(map(repr, LEARNING_RATES))}, got {self.learning_rate!r}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(map(repr, ACTIVATIONS))}, got {self.activation!r}")
        if self.init not in presets.INITS:
            raise ValueError(f"init must be one of {', '.join(map(repr, presets.INITS))}, got {self.init!r}")
        for name in ("shuffle", "warm_start", "early_stopping"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True (as in scikit-learn)")
        self._hiddens()
        if self.batch_size != "auto":
            as_int("batch_size", self.batch_size, minimum=1)
        as_float("alpha", self.alpha, minimum=0.0)
        as_float("learning_rate_init", self.learning_rate_init, minimum=0.0)
        as_float("lr_decay", self.lr_decay, minimum=0.0, maximum=1.0)
        as_float("power_t", self.power_t, minimum=0.0)
        as_float("momentum", self.momentum, minimum=0.0, below=1.0)
        as_float("tol", self.tol, minimum=0.0)
        as_int("max_iter", self.max_iter, minimum=1)
        as_int("n_iter_no_change", self.n_iter_no_change, minimum=1)
        if self.early_stopping:
            fraction = as_float("validation_fraction", self.validation_fraction, minimum=0.0, below=1.0)
            if fraction == 0.0:
                raise ValueError("validation_fraction must be > 0 with early_stopping=True")

    def _hiddens(self) -> list[int]:
        """``hidden_layer_sizes`` as a list of ints >= 1: an int is one layer; 2.5, "64" or True are refused."""
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
            sizes = [sizes]
        return [as_int(f"hidden_layer_sizes[{i}]", h, minimum=1) for i, h in enumerate(sizes)]

    def _start(self, X: Any, classes: Any) -> None:
        """A new network for ``X``'s features and the labels in ``classes``; a new run's statistics and seed."""
        self.classes_ = host.unique(host.asarray(classes))
        if len(self.classes_) < 2:
            raise ValueError(f"MLPClassifier needs at least 2 classes; y has 1 class ({self.classes_[0]!r})")
        rng = check_random_state(self.random_state)
        self.model_ = self._build(X.shape[1], X.dtype, rng)
        self.history_ = History()
        self._seed = int(rng.randint(2**31))
        self.t_ = 0
        self._no_improvement_count = 0
        self._best_loss = math.inf
        self._best_score = -math.inf

    def _build(self, n_features: int, input_dtype: Any, rng: Any) -> MLP:
        hiddens = self._hiddens()
        dtype = self.dtype or ("float32" if input_dtype == host.float32 else "float64")
        return presets.build_mlp(
            n_features,
            len(self.classes_),
            hiddens,
            activation=ACTIVATIONS[self.activation],
            init=self.init,
            lr=self.learning_rate_init,
            momentum=self.momentum,
            bn_layers=len(hiddens) if self.bn_layers is None else self.bn_layers,
            rng=rng,  # a local generator: global state is left alone
            backend=self.backend,
            device=self.device,
            dtype=dtype,
        )

    def _check_warm_start(self, y: Any) -> None:
        """Refuse labels or parameters that the fitted network cannot continue with."""
        model = self.model_
        if not host.array_equal(host.unique(y), self.classes_):
            raise ValueError(
                f"warm_start continues a network fitted on classes {self.classes_!r}; y has {host.unique(y)!r}"
            )
        activation = type(model.activations[0]).__name__ if model.hiddens else None
        fitted = {
            "hidden_layer_sizes": model.hiddens,
            "activation": activation,
            "bn_layers": model.num_bn_layers,
            "backend": model.backend,
        }
        asked = {
            "hidden_layer_sizes": self._hiddens(),
            "activation": presets.ACTIVATIONS[ACTIVATIONS[self.activation]].__name__ if model.hiddens else None,
            "bn_layers": len(model.hiddens) if self.bn_layers is None else self.bn_layers,
            "backend": get_backend(self.backend, self.device),
        }
        if self.dtype is not None:
            fitted["dtype"], asked["dtype"] = model.dtype, self.dtype
        changed = [name for name in fitted if fitted[name] != asked[name]]
        if changed:
            raise ValueError(
                f"warm_start continues the fitted network, but {', '.join(changed)} changed since it was fitted; "
                "set warm_start=False to train a new one"
            )

    def _train(self, X: Any, labels: Any, epochs: int, incremental: bool) -> None:
        """``epochs`` epochs of :func:`xpmlp.fit`, with scikit-learn's schedules and stopping rule between them."""
        model, history = self.model_, self.history_
        val = None
        if self.early_stopping:
            X, X_val, labels, val_labels = train_test_split(
                X, labels, test_size=self.validation_fraction, random_state=self._seed, stratify=labels
            )
            val = (X_val, val_labels)
        model.momentum = float(self.momentum)  # checked in _check_parameters
        if not incremental:  # scikit-learn starts a new optimizer each fit: the initial rate, no velocity
            model.lr = float(self.learning_rate_init)
            state = model.state_dict()
            zero = model.backend.xp.zeros_like
            model.load_state_dict({k: zero(v) if k.startswith("velocity") else v for k, v in state.items()})
        n_train, started, batch_size = len(X), history.epochs, self._batch_size(len(X))
        model.l2 = float(self.alpha) / batch_size

        def after_epoch(epoch: int, h: History) -> bool:  # scikit-learn's iteration end; True stops
            self.t_ += n_train
            if self.verbose:
                print(f"Iteration {epoch - started}, loss = {h.train_loss[-1]:.8f}")
            self._count_no_improvement(h)
            if self.learning_rate == "exponential" and not incremental:
                model.lr = presets.scheduled_lr(self.learning_rate_init, self.lr_decay, epoch - started)
            elif self.learning_rate == "invscaling":
                model.lr = self.learning_rate_init / (self.t_ + 1) ** self.power_t
            if self._no_improvement_count <= self.n_iter_no_change:
                return False
            what = "Validation score" if self.early_stopping else "Training loss"
            message = f"{what} did not improve more than tol={self.tol} for {self.n_iter_no_change} consecutive epochs."
            if self.learning_rate != "adaptive" or model.lr <= SMALLEST_ADAPTIVE_RATE:
                if self.verbose:
                    print(f"{message} Stopping.")
                return not incremental
            model.lr /= 5.0
            self._no_improvement_count = 0
            if self.verbose:
                print(f"{message} Setting learning rate to {model.lr:f}")
            return False

        try:
            fit(
                model,
                (X, labels),
                val,
                epochs=started + epochs,
                batch_size=batch_size,
                seed=self._seed,
                history=history,
                # the epoch of lowest validation loss is kept, and the next fit goes on from it, as scikit-learn
                # does; fit never stops by itself (no patience): the stop is scikit-learn's rule in after_epoch
                early_stopping=EarlyStopping(keep_best=True, resume="best") if val is not None else None,
                progress=False,
                callbacks=[after_epoch],
                shuffle=self.shuffle,
            )
        finally:
            self._publish(history.epochs - started)

    def _count_no_improvement(self, h: History) -> None:
        """Update scikit-learn's count of epochs in a row without an improvement by ``tol``."""
        if self.early_stopping:
            score = 1.0 - h.val_error[-1]
            if self.verbose:
                print(f"Validation score: {score:f}")
            worse = score < self._best_score + self.tol
            self._best_score = max(self._best_score, score)
        else:
            loss = h.train_loss[-1]
            worse = loss > self._best_loss - self.tol
            self._best_loss = min(self._best_loss, loss)
        self._no_improvement_count = self._no_improvement_count + 1 if worse else 0

    def _publish(self, epochs: int) -> None:
        """The fitted attributes scikit-learn users read, from the history and one host copy of the weights."""
        history, model, to_host = self.history_, self.model_, self.model_.backend.to_host
        self.n_iter_ = epochs
        self.loss_curve_ = list(history.train_loss)
        self.loss_ = self.loss_curve_[-1] if self.loss_curve_ else None
        self.best_loss_ = None if self.early_stopping else self._best_loss
        self.validation_scores_ = [1.0 - e for e in history.val_error] if self.early_stopping else None
        best = history.best_epoch or history.epochs
        self.best_validation_score_ = self.validation_scores_[best - 1] if self.validation_scores_ else None
        self.n_layers_ = model.nlayers + 1
        self.n_outputs_ = model.output_size
        self.out_activation_ = "softmax"
        self.coefs_ = [host.array(to_host(w)) for w in model.W]
        self.intercepts_ = [host.array(to_host(b)).reshape(-1) for b in model.b]

    def _batch_size(self, n: int) -> int:
        """``batch_size`` ("auto": min(200, n)) capped at n, grown while it would leave BatchNorm a batch of one."""
        size = min(200, n) if self.batch_size == "auto" else min(as_int("batch_size", self.batch_size, minimum=1), n)
        while self.model_.num_bn_layers and 1 < size < n and presets.leaves_batch_of_one(n, size):
            size += 1
        return size
