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
import warnings
from collections.abc import Sequence
from typing import Any

from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import unique_labels
from sklearn.utils.validation import check_is_fitted, validate_data

from . import presets
from .backend import host
from .estimator_checks import (
    ACTIVATIONS,
    PARAMETER_CONSTRAINTS,
    check_classes,
    check_parameters,
    check_targets,
    check_warm_start,
    hidden_sizes,
    partial_fit_available,
    training_batch_size,
    validation_split,
    weighted_split,
)
from .evaluation import check_outputs
from .loss import SigmoidBinaryCrossEntropy, log_sigmoid, log_softmax
from .mlp import MLP
from .presets import DEFAULTS
from .sparse import check_dense_batch_fits, is_sparse, sparse_forward
from .training import EVAL_CHUNK, EarlyStopping, History, check_inputs, eval_mode, fit

__all__ = ["MLPClassifier"]

SPARSE_FORMATS = ("csr", "csc")  # as scikit-learn's MLPClassifier; each becomes CSR on the device

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
        Most epochs (passes over the training data) of a fit; a fit that reaches it before the ``tol`` rule
        stops training warns ``sklearn.exceptions.ConvergenceWarning``, in scikit-learn's words.
    shuffle
        Shuffle the training rows each epoch (seeded by ``random_state``); False: their given order.
    tol, n_iter_no_change
        Stop when, ``n_iter_no_change`` + 1 epochs in a row, the training loss (with ``early_stopping``:
        the validation accuracy) has not improved on the best so far by ``tol`` (scikit-learn's rule);
        ``n_iter_no_change=np.inf`` switches the rule off.
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
    devices
        Data-parallel training on this many devices (:func:`xpmlp.fit`'s ``devices``: JAX's devices, or
        one torch process per device); the batch size must be a multiple. The result is one device's.

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

    _parameter_constraints = PARAMETER_CONSTRAINTS

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
        n_iter_no_change: int | float = 10,
        bn_layers: int | None = None,
        init: str = DEFAULTS["init"],
        backend: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        devices: int = 1,
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
        self.devices = devices

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPClassifier:
        """Train on ``X`` (n_samples, n_features) and labels ``y``: a new network, or with warm_start the fitted one.

        ``sample_weight`` (n_samples,), w ≥ 0: each batch's loss is Σ wᵢLᵢ / Σ wᵢ (scikit-learn's), rows of weight 0
        are left out, early stopping's validation score is the weighted accuracy; BatchNorm's statistics stay
        unweighted.
        """
        return self._fit(X, y, sample_weight, classes=None, incremental=False)

    @available_if(lambda estimator: partial_fit_available(estimator.solver))
    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None, classes: Any = None) -> MLPClassifier:
        """One pass over ``X``, ``y`` at the current rate; the first call needs ``classes`` (all labels to come).

        ``sample_weight`` as in :meth:`fit`; the order of the arguments is scikit-learn's.

        Only with ``solver="sgd"`` (otherwise there is no such attribute, as scikit-learn has none for
        ``"lbfgs"``). BatchNorm cannot train on one sample: online learning one sample at a time needs
        ``bn_layers=0`` (a call with one sample, or ``batch_size=1``, says so).
        """
        return self._fit(X, y, sample_weight, classes=classes, incremental=True)

    def predict_proba(self, X: Any) -> Any:
        """Softmax probabilities (n_samples, n_classes), columns ordered as ``classes_``; eval mode.

        Multilabel: each label's logistic probability σ(zⱼ), (n_samples, n_labels), as scikit-learn's.
        """
        return host.exp(self.predict_log_proba(X))

    def predict_log_proba(self, X: Any) -> Any:
        """log σ(z) of the output logits z (n_samples, n_classes), the log-softmax: finite where σ(z) rounds to 0.

        Multilabel: log σ(zⱼ) = −softplus(−zⱼ) of each label's logistic output.
        """
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse=SPARSE_FORMATS, dtype=(host.float64, host.float32), reset=False)
        model = self.model_
        if not is_sparse(X):
            X = check_inputs(X, model.input_size, "predict", model.dtype)  # 1e39 is infinite in float32
        with eval_mode(model), host.errstate(over="ignore", invalid="ignore"):  # checked below: no NumPy warning
            logits = model.forward(X) if not is_sparse(X) else sparse_forward(model, X, EVAL_CHUNK)
            log_proba = log_sigmoid(logits) if self._multilabel else log_softmax(logits)
        log_proba = host.asarray(model.backend.to_host(log_proba), dtype=host.float64)
        check_outputs(model, host.count_nonzero(~host.isfinite(log_proba).all(axis=1)), len(log_proba), "predict")
        return log_proba

    def predict(self, X: Any) -> Any:
        """The most probable class of each row, as a label from ``classes_``.

        Multilabel: the indicator (n_samples, n_labels) of the labels whose probability is above 0.5.
        """
        proba = self.predict_proba(X)
        if self._multilabel:
            return (proba > 0.5).astype(host.int64)
        return self.classes_[host.argmax(proba, axis=1)]

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        tags.input_tags.sparse = True
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    def _fit(self, X: Any, y: Any, sample_weight: Any, classes: Any, incremental: bool) -> MLPClassifier:
        """fit and partial_fit: every check first; a failed first call leaves the estimator as it was."""
        check_parameters(self, incremental)
        first = not hasattr(self, "model_") or (not incremental and not self.warm_start)
        before = dict(vars(self))
        try:
            X, y = validate_data(self, X, y, accept_sparse=SPARSE_FORMATS, dtype=(host.float64, host.float32),
                                 reset=first, multi_output=True)  # fmt: skip
            y, multilabel = check_targets(y)
            if first and incremental and classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            if first:
                self._multilabel = multilabel
                self._start(X, unique_labels(y) if classes is None or multilabel else classes)
            if not first and not incremental:
                check_warm_start(self)
            check_classes(self, y, None if first else classes, warm_start=not first and not incremental)
            labels = y.astype(host.int64) if multilabel else host.searchsorted(self.classes_, y)
            split = (X, labels) if sample_weight is None else weighted_split(X, labels, sample_weight)
            self._train(split, 1 if incremental else self.max_iter, incremental)
        except BaseException:
            if first:  # nothing of a failed start stays behind: the estimator is as it was
                vars(self).clear()
                vars(self).update(before)
            raise
        return self

    def _start(self, X: Any, classes: Any) -> None:
        """A new network for ``X``'s features and the labels in ``classes``; a new run's statistics and seed."""
        self.classes_ = host.unique(host.asarray(classes))  # one class: one output, σ = 1, loss and gradient 0
        rng = check_random_state(self.random_state)
        self.model_ = self._build(X.shape[1], X.dtype, rng)
        self.history_ = History()
        self._seed = int(rng.randint(2**31))
        self.t_ = 0
        self._no_improvement_count = 0
        self._best_loss = math.inf
        self._best_score = -math.inf

    def _build(self, n_features: int, input_dtype: Any, rng: Any) -> MLP:
        hiddens = hidden_sizes(self.hidden_layer_sizes)
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
            criterion=SigmoidBinaryCrossEntropy() if self._multilabel else None,  # None: softmax cross-entropy
        )

    def _train(self, split: tuple, epochs: int, incremental: bool) -> None:
        """``epochs`` epochs of :func:`xpmlp.fit` on ``split`` (X, labels[, weights]), with scikit-learn's schedules
        and stopping rule between them."""
        model, history = self.model_, self.history_
        val = None
        if self.early_stopping:
            split, val = validation_split(split, len(self.classes_), self.validation_fraction, self._seed)
        X = split[0]
        batch_size = training_batch_size(
            self, X.shape[0], "partial_fit" if incremental else "fit"
        )  # before anything changes
        if is_sparse(X):
            check_dense_batch_fits(batch_size, X.shape[1], X.dtype.itemsize)
        model.momentum = float(self.momentum)  # checked in check_parameters
        if not incremental:  # scikit-learn starts a new optimizer each fit: the initial rate, no velocity
            model.lr = float(self.learning_rate_init)
            state = model.state_dict()
            zero = model.backend.xp.zeros_like
            model.load_state_dict({k: zero(v) if k.startswith("velocity") else v for k, v in state.items()})
        n_train, started = X.shape[0], history.epochs
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
            message = (
                f"{what} did not improve more than tol={self.tol:f} for {self.n_iter_no_change} consecutive epochs."
            )
            if self.learning_rate != "adaptive" or model.lr <= SMALLEST_ADAPTIVE_RATE:
                if self.verbose:
                    print(f"{message} Stopping.")
                converged.append(not incremental)
                return not incremental
            model.lr /= 5.0
            self._no_improvement_count = 0
            if self.verbose:
                print(f"{message} Setting learning rate to {model.lr:f}")
            return False

        converged: list[bool] = []
        try:
            fit(
                model,
                split,
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
                devices=self.devices,
            )
        finally:
            self._publish(history.epochs - started)
        if not incremental and not converged and self.n_iter_ == self.max_iter:
            warnings.warn(
                f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the optimization hasn't "
                "converged yet.",
                ConvergenceWarning,
                stacklevel=4,
            )

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
        self.out_activation_ = "logistic" if self._multilabel else "softmax"
        self.coefs_ = [host.array(to_host(w)) for w in model.W]
        self.intercepts_ = [host.array(to_host(b)).reshape(-1) for b in model.b]
