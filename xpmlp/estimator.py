"""A scikit-learn estimator over :class:`~xpmlp.MLP`: drops into a Pipeline and GridSearchCV, on every backend.

Not a second implementation: ``fit`` builds an :class:`~xpmlp.MLP` and trains it
with :func:`~xpmlp.fit`; the trained model is ``model_`` (``xpmlp.save`` writes it).
Parameters are named as scikit-learn's ``MLPClassifier`` names them where they
mean the same; NumPy goes in and NumPy comes out, whichever device trains.
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

from .activations import Identity, ReLU, Sigmoid, Tanh
from .backend import host
from .checks import as_int
from .init import zeros_bias_init
from .loss import SoftmaxCrossEntropy, log_softmax
from .mlp import MLP
from .training import History, eval_mode, fit

__all__ = ["MLPClassifier"]

ACTIVATIONS = {"relu": ReLU, "logistic": Sigmoid, "tanh": Tanh, "identity": Identity}
WEIGHT_SCALES = {"he": lambda fan_in: math.sqrt(2.0 / fan_in), "normal": lambda fan_in: 1.0}


class MLPClassifier(ClassifierMixin, BaseEstimator):
    """Softmax cross-entropy MLP trained by momentum SGD, with BatchNorm, on any xpmlp backend.

    Parameters
    ----------
    hidden_layer_sizes
        Units of each hidden layer.
    activation
        ``"relu"``, ``"logistic"`` (sigmoid), ``"tanh"`` or ``"identity"``.
    batch_size
        Mini-batch size (at most the number of training examples). If it would leave a
        last batch of one example, which BatchNorm cannot train on, it grows by one until not.
    learning_rate_init, lr_decay
        The rate of epoch k (0-based) is ``learning_rate_init · lr_decay^k``.
    momentum
        μ of the update v ← μ·v − η·grad; p ← p + v.
    max_iter
        Epochs (passes over the training data).
    early_stopping, validation_fraction, n_iter_no_change
        Hold out a stratified ``validation_fraction`` of the training data; stop after
        ``n_iter_no_change`` epochs without a lower validation loss and keep the best epoch's model.
    random_state
        Seeds the initial weights and the shuffles (an int, a RandomState or None).
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
    loss_curve_ : list of float
        Mean training loss of each epoch.
    validation_scores_ : list of float or None
        Validation accuracy of each epoch when ``early_stopping``.
    best_validation_score_ : float or None
        The accuracy of the kept epoch when ``early_stopping``.
    n_iter_ : int
        Epochs trained.
    history_ : History
        :func:`xpmlp.fit`'s per-epoch statistics.
    """

    def __init__(
        self,
        hidden_layer_sizes: Sequence[int] = (256, 128),
        activation: str = "relu",
        *,
        batch_size: int = 100,
        learning_rate_init: float = 0.2,
        lr_decay: float = 0.6,
        momentum: float = 0.9,
        max_iter: int = 10,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 10,
        random_state: Any = None,
        verbose: bool = False,
        bn_layers: int | None = None,
        init: str = "he",
        backend: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.lr_decay = lr_decay
        self.momentum = momentum
        self.max_iter = max_iter
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.random_state = random_state
        self.verbose = verbose
        self.bn_layers = bn_layers
        self.init = init
        self.backend = backend
        self.device = device
        self.dtype = dtype

    def fit(self, X: Any, y: Any) -> MLPClassifier:
        """Train a new network on ``X`` (n_samples, n_features) and labels ``y``."""
        X, y = validate_data(self, X, y, dtype=(host.float64, host.float32))
        check_classification_targets(y)
        self._start(X, y)
        return self._train(X, y, self.max_iter, self.early_stopping)

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> MLPClassifier:
        """One more epoch on ``X``, ``y``; the first call needs ``classes`` (every label there will be)."""
        first = not hasattr(self, "model_")
        X, y = validate_data(self, X, y, dtype=(host.float64, host.float32), reset=first)
        check_classification_targets(y)
        if first:
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit")
            self._start(X, classes)
        elif classes is not None and not host.array_equal(host.unique(host.asarray(classes)), self.classes_):
            raise ValueError(f"classes={classes!r} differs from the first call's classes {self.classes_!r}")
        unseen = host.setdiff1d(y, self.classes_)
        if unseen.size:
            raise ValueError(f"y holds labels {unseen!r} that are not in classes {self.classes_!r}")
        return self._train(X, y, self.history_.epochs + 1, early_stopping=False)

    def predict_proba(self, X: Any) -> Any:
        """Softmax probabilities (n_samples, n_classes), columns ordered as ``classes_``; eval mode."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=(host.float64, host.float32), reset=False)
        with eval_mode(self.model_) as model:
            logits = model.forward(X)
        return host.asarray(model.backend.to_host(model.backend.xp.exp(log_softmax(logits))), dtype=host.float64)

    def predict(self, X: Any) -> Any:
        """The most probable class of each row, as a label from ``classes_``."""
        proba = self.predict_proba(X)
        return self.classes_[host.argmax(proba, axis=1)]

    def _start(self, X: Any, classes: Any) -> None:
        """A new network for ``X``'s features and the labels in ``classes``; an empty history; the shuffle seed."""
        self.classes_ = host.unique(host.asarray(classes))
        rng = check_random_state(self.random_state)
        self.model_ = self._build(X.shape[1], X.dtype, rng)
        self.history_ = History()
        self._seed = int(rng.randint(2**31))

    def _build(self, n_features: int, input_dtype: Any, rng: Any) -> MLP:
        hiddens = [int(h) for h in host.atleast_1d(self.hidden_layer_sizes)]
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(map(repr, ACTIVATIONS))}, got {self.activation!r}")
        if self.init not in WEIGHT_SCALES:
            raise ValueError(f"init must be one of {', '.join(map(repr, WEIGHT_SCALES))}, got {self.init!r}")
        if len(self.classes_) < 2:
            raise ValueError(f"MLPClassifier needs at least 2 classes; y has 1 class ({self.classes_[0]!r})")
        scale = WEIGHT_SCALES[self.init]
        dtype = self.dtype or ("float32" if input_dtype == host.float32 else "float64")
        return MLP(
            n_features,
            len(self.classes_),
            hiddens,
            [ACTIVATIONS[self.activation]() for _ in hiddens] + [Identity()],
            lambda i, o: rng.standard_normal((i, o)) * scale(i),  # a local generator: global state is left alone
            zeros_bias_init,
            SoftmaxCrossEntropy(),
            self.learning_rate_init,
            self.momentum,
            len(hiddens) if self.bn_layers is None else self.bn_layers,
            backend=self.backend,
            device=self.device,
            dtype=dtype,
        )

    def _train(self, X: host.ndarray, y: host.ndarray, epochs: int, early_stopping: bool) -> MLPClassifier:
        labels = host.searchsorted(self.classes_, y)
        val = None
        if early_stopping:
            X, X_val, labels, val_labels = train_test_split(
                X, labels, test_size=self.validation_fraction, random_state=self._seed, stratify=labels
            )
            val = (X_val, val_labels)
        model, history = self.model_, self.history_

        def schedule(epoch: int, h: History) -> None:  # the rate of the next epoch
            model.lr = self.learning_rate_init * self.lr_decay**epoch
            if self.verbose:
                print(f"Iteration {epoch}, loss = {h.train_loss[-1]:.8f}")

        fit(
            model,
            (X, labels),
            val,
            epochs=epochs,
            batch_size=self._batch_size(len(X)),
            seed=self._seed,
            history=history,
            patience=self.n_iter_no_change if early_stopping else None,
            progress=False,
            callbacks=[schedule],
        )
        self.n_iter_ = history.epochs
        self.loss_curve_ = list(history.train_loss)
        self.validation_scores_ = [1.0 - e for e in history.val_error] if early_stopping else None
        best = history.best_epoch or history.epochs
        self.best_validation_score_ = self.validation_scores_[best - 1] if early_stopping else None
        return self

    def _batch_size(self, n: int) -> int:
        """``batch_size`` capped at n, grown while it would leave BatchNorm a last batch of one."""
        size = min(as_int("batch_size", self.batch_size, minimum=1), n)
        while self.model_.num_bn_layers and size < n and n % size == 1:
            size += 1
        return size
