"""``NeuralNetClassifier`` and ``NeuralNetRegressor``: skorch estimators that predict in FHE."""
from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import os
import pickle
import warnings
from typing import Iterator, Optional, Union

import numpy as np
import skorch
import torch
from scipy.special import softmax
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from .._threads import one_torch_thread
from ..fhe.cost import FheCost
from ..fhe.modes import FheMode
from ..quantization.tabulate import narrowed_outputs
from ..torch.compile import OverflowHint, compile_brevitas_qat_model, overflow_advice
from .batches import WholeBatches
from .binning import fit_binning
from .float_twin import FloatMLP, FloatNeuralNetClassifier, FloatNeuralNetRegressor
from .input_scaling import ScaledInputs
from .linear_term import fit_linear_term
from .pruning import PruneWeights
from .qat_module import QATMLP
from .progress import EpochProgress
from .schedule import OneCycle
from .targets import _ClassLabels, _Targets
from .validation import EarlyStoppingMixin, StopWhenValidationStalls, scoring_the_network

__all__ = [
    "NeuralNetClassifier",
    "NeuralNetRegressor",
    "load",
]

logger = logging.getLogger(__name__)

# 8 bits at a loose p_error beat 7 bits at a strict one: more accurate, for a little less
# FHE work (docs/design-notes.md, "Estimator defaults", has the measurements)
# "default": 8-bit lookups on data of few features, 7 bits beyond (see _default_rounding)
DEFAULT_ROUNDING = "default"
FEW_FEATURES = 2
# "auto" input bins leave this many input combinations in all: tabulated into 6-bit lookups
AUTO_BINNED_COMBINATIONS = 2**6
DEFAULT_P_ERROR = 0.3
# the classifier's network on data of more than FEW_FEATURES features, when the user sets neither
# depth nor widths: one hidden layer (a lookup per neuron) on narrow integers, whose 7-bit
# lookups then get keys of one decomposition level (design notes, "Wide data: one hidden layer")
WIDE_NETWORK = {"n_layers": 2, "n_hidden": 16, "n_w_bits": 4, "n_a_bits": 4, "n_input_bits": 6}
# Adam's weight decay for that network: without it, it overfits digits by 1.5 points (design notes)
WIDE_WEIGHT_DECAY = 1e-3
# the default with learned input bins: a mistake of the one lookup reads another cell's
# entry, not a neighbouring value of a smooth function (design notes)
BINNED_P_ERROR = 0.01
MAX_COMPILE_SAMPLES = 2000
# what a user of the estimators can change when a layer is too wide for FHE
OVERFLOW_HINT = OverflowHint(
    bits="lower module__n_w_bits / module__n_a_bits",
    pruning="prune with module__max_non_zero (or module__n_accum_bits)",
    rounding="round accumulators with rounding_threshold_bits (e.g. the default, 8 bits)",
)
# settings of the FHE estimators that a float network has no use for
FHE_ONLY_PARAMS = ("rounding_threshold_bits", "p_error", "global_p_error", "random_state", "input_bins")
PathLike = Union[str, "os.PathLike[str]"]


def _far_features(low: np.ndarray, high: np.ndarray, data_min: np.ndarray, data_max: np.ndarray) -> np.ndarray:
    """Indices of the features whose range ``[low, high]`` is far from ``[data_min, data_max]``.

    Far: the two ranges do not overlap, or ``[low, high]`` reaches beyond the other on
    either side by more than the other's width.
    """
    width = data_max - data_min
    disjoint = (high < data_min) | (low > data_max)
    beyond = (low < data_min - width) | (high > data_max + width)
    return np.flatnonzero(disjoint | beyond)


class FheMixin(WholeBatches, ScaledInputs, EarlyStoppingMixin):
    """Compile after training and dispatch ``predict`` to the clear, simulated or encrypted model.

    Holds the settings both estimators share; each sets its own default ``criterion``.
    ``random_state`` (None, an int or a ``numpy.random.RandomState``) seeds torch for
    the initial weights and the shuffling of ``fit``; None leaves torch's global seed in charge.
    """

    def __init__(
        self,
        module=QATMLP,
        *args,
        criterion,
        optimizer=torch.optim.Adam,
        lr=0.02,
        # 300 rather than 150 or 200: with fewer, some training seeds fall behind (design notes)
        max_epochs=300,
        # 128 rather than 256: more steps, a little more accurate for 1.7x the time (design notes)
        batch_size=128,
        train_split=None,
        verbose=0,
        rounding_threshold_bits=DEFAULT_ROUNDING,
        p_error=DEFAULT_P_ERROR,
        global_p_error=None,
        random_state=None,
        input_bins="auto",
        scale_inputs=True,
        **kwargs,
    ):
        # skorch feeds the same batches every epoch unless told to shuffle
        kwargs.setdefault("iterator_train__shuffle", True)
        super().__init__(module, *args, criterion=criterion, optimizer=optimizer, lr=lr,
                         max_epochs=max_epochs, batch_size=batch_size, train_split=train_split,
                         verbose=verbose, **kwargs)
        self.rounding_threshold_bits = rounding_threshold_bits
        self.p_error = p_error
        self.global_p_error = global_p_error
        self.random_state = random_state
        self.input_bins = input_bins
        self.scale_inputs = scale_inputs
        # skorch's ``compile`` (torch.compile) flag would hide our ``compile`` method
        vars(self).pop("compile", None)

    def _check_X(self, X) -> np.ndarray:
        """``X`` as the fitted network takes it: finite float32 with ``n_features_in_`` columns."""
        return validate_data(self, X, reset=False, dtype=np.float32)

    def _get_param_names(self):
        # skorch lists its private ``_params_to_validate`` set among the parameters, and
        # ``set_params`` on it would replace the set by any value and break the estimator
        return [name for name in super()._get_param_names() if name != "_params_to_validate"]

    def get_params(self, deep=True, **kwargs):
        """The estimator's parameters; with ``deep``, also those of its module and callbacks.

        As scikit-learn lists a nested estimator's parameters, ``deep`` lists the module's
        (``module__n_hidden``, ``module__n_w_bits``, ...) with the defaults ``fit`` builds
        it with, and each callback's (``callbacks__prune__max_non_zero``, ...); the keys
        are the same before and after ``fit``.
        """
        params = super().get_params(deep=deep, **kwargs)
        return {**self._module_defaults(), **params} if deep else params

    def _module_defaults(self) -> dict:
        """``module__<name>`` for each argument of the module class that has a default."""
        if not isinstance(self.module, type):
            return {}  # an instance: already built, it takes no arguments
        try:
            arguments = inspect.signature(self.module).parameters.values()
        except (TypeError, ValueError):  # a class whose signature Python cannot read
            return {}
        keywords = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return {f"module__{arg.name}": arg.default for arg in arguments
                if arg.kind in keywords and arg.default is not inspect.Parameter.empty}

    def _get_params_callbacks(self, deep=True):
        # skorch lists the callbacks fit built, and before fit only its own defaults, each
        # with its class defaults: list every callback as fit will set it up, at any time
        if not deep or self.callbacks == "disable":
            return {}
        params = {}
        for name, callback in self._uniquely_named_callbacks():
            key = f"callbacks__{name}"
            callback = vars(self).get(key, callback)  # replaced by callbacks__<name>=...
            params[key] = callback
            if callback is not None and not isinstance(callback, type):
                params.update({f"{key}__{arg}": value for arg, value in callback.get_params().items()})
            params.update({f"{key}__{arg}": value for arg, value in self.get_params_for(key).items()})
        return params

    @contextlib.contextmanager
    def _torch_seed(self) -> Iterator[None]:
        """Seed torch from ``random_state``; torch's global generator is restored afterwards."""
        if self.random_state is None:
            yield
            return
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield

    def fit(self, X, y, **fit_params):
        """Train with QAT (and pruning), then compile to FHE with ``X`` as inputset.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Numbers; cast to float32.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Labels of any type for the classifier, numbers for the regressor.
        **fit_params :
            Passed on to skorch's training loop.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            If ``X`` or ``y`` hold NaN or inf, if their lengths differ, or if the
            classifier is given continuous targets.
        """
        return self._train(X, y, restart=not self.warm_start, **fit_params)

    def _train(self, X, y, restart: bool, classes=None, **fit_params):
        restart = restart or not (self.initialized_ and hasattr(self, "n_features_in_"))
        X, y = self._training_data(X, y, reset=restart, classes=classes)
        self._record_data_range(X, reset=restart)
        if restart:
            self.input_binning_ = self._fit_input_binning(X, y)
            # bins are indices whatever the feature's scale: only values need scaling
            self.input_scaler_ = self._fit_input_scaler(X) if self.input_binning_ is None else None
        # checked before training, not after; once the bins are known, since they set the default p_error
        settings = self._compile_settings()
        X = self._network_input(X)
        self._resolve_early_stopping(len(X), fresh=restart)
        with self._torch_seed(), one_torch_thread():
            if restart:
                self._initialize_network(X, y)
            super().partial_fit(X, y, **fit_params)
        return self._compile(X, settings)

    def _initialize_network(self, X: np.ndarray, y: np.ndarray) -> None:
        """A fresh network, optimizer and callbacks before training on ``(X, y)``."""
        self.initialize()

    # whether input_bins="auto" bins data of few features (the classifier's labels place the edges)
    _auto_bins = False
    # bits a tabulated network's outputs keep (None: exact); a classifier reads only their argmax and softmax
    _table_output_bits: Optional[int] = None

    def _bins_per_feature(self) -> Optional[int]:
        """Bins per feature ``fit`` learns, or None to feed the network the values themselves."""
        if self.input_bins is None:
            return None
        if isinstance(self.input_bins, str) and self.input_bins == "auto":
            if not (self._auto_bins and self._uses_qatmlp() and self.n_features_in_ <= FEW_FEATURES):
                return None
            n_bins = int(round(AUTO_BINNED_COMBINATIONS ** (1 / self.n_features_in_)))
            # no more bins than the input bits a user set hold, as signed integers
            bits = skorch.NeuralNet.get_params_for(self, "module").get("n_input_bits")
            n_bins = n_bins if bits is None else min(n_bins, 2 ** (int(bits) - 1))
            return n_bins if n_bins >= 2 else None
        if isinstance(self.input_bins, (int, np.integer)) and not isinstance(self.input_bins, bool) \
                and self.input_bins >= 2:
            return int(self.input_bins)
        raise ValueError(f"input_bins must be 'auto', None or an int >= 2, got {self.input_bins!r}")

    def _fit_input_binning(self, X: np.ndarray, y: np.ndarray):
        n_bins = self._bins_per_feature()
        if n_bins is None:
            return None
        n_classes = self.n_outputs_ if self._auto_bins else None
        return fit_binning(X, y if n_classes is not None else y.astype(np.float64), n_bins, n_classes)

    def _network_input(self, X: np.ndarray) -> np.ndarray:
        """``X`` as the network reads it: each feature's bin index when ``fit`` learnt bins,
        else each feature standardized (``scale_inputs``)."""
        transform = self._fitted_transform()
        return X if transform is None else transform.transform(X).astype(np.float32)

    def _fitted_transform(self):
        # during fit too, before the module is compiled; None for models saved before either existed
        binning = getattr(self, "input_binning_", None)
        return binning if binning is not None else getattr(self, "input_scaler_", None)

    @property
    def input_transform_(self):
        """The fitted per-feature transform applied in the clear before quantization:
        ``input_binning_``, ``input_scaler_`` or None. A client applies it too."""
        check_is_fitted(self, "quantized_module_")
        return self._fitted_transform()

    def _record_data_range(self, X: np.ndarray, reset: bool) -> None:
        """Per feature, the lowest and highest training value: ``data_min_`` and ``data_max_``."""
        low, high = X.min(axis=0), X.max(axis=0)
        if not reset:  # partial_fit: the network has seen the earlier data too
            low, high = np.minimum(low, self.data_min_), np.maximum(high, self.data_max_)
        self.data_min_, self.data_max_ = low, high

    def fit_benchmark(self, X, y, **fit_params):
        """Fit this estimator and its float twin: the same network without quantization.

        The twin is a skorch net (``FloatNeuralNetClassifier`` or ``FloatNeuralNetRegressor``)
        on a ``FloatMLP`` with the layers, widths and activation of this ``QATMLP``, trained
        with the same skorch settings (optimizer, lr, epochs, batch size, callbacks,
        ``random_state``) on the same data; it is neither pruned nor compiled. Its
        ``score`` next to ours shows what quantization costs.

        Parameters
        ----------
        X, y, **fit_params :
            As for ``fit``; both networks train on them.

        Returns
        -------
        model : NeuralNetClassifier or NeuralNetRegressor
            ``self``, fitted and compiled.
        float_model : FloatNeuralNetClassifier or FloatNeuralNetRegressor
            The fitted float twin.

        Raises
        ------
        ValueError
            If ``module`` is not ``QATMLP``: there is no float twin to build for it.

        Examples
        --------
        >>> model, float_model = NeuralNetClassifier().fit_benchmark(X, y)   # doctest: +SKIP
        >>> model.score(X_test, y_test), float_model.score(X_test, y_test)   # doctest: +SKIP
        """
        if self.module is not QATMLP:
            raise ValueError(
                f"fit_benchmark builds the float twin of QATMLP, but module is {self.module!r}: "
                "train a float version of your module with skorch for the comparison"
            )
        self.fit(X, y, **fit_params)
        float_model = self._float_twin(**self._float_twin_params())
        with self._torch_seed():
            float_model.fit(X, y, **fit_params)
        return self, float_model

    def _float_twin_params(self) -> dict:
        layers = inspect.signature(QATMLP).bind(**self.get_params_for("module"))
        layers.apply_defaults()
        params = {f"module__{name}": layers.arguments[name] for name in inspect.signature(FloatMLP).parameters}
        for name, value in self.get_params(deep=False).items():
            # quantization settings, our pruning callback and FHE settings stay with us
            if name.startswith(("module", "callbacks__prune")) or name in FHE_ONLY_PARAMS:
                continue
            params[name] = copy.deepcopy(value)
        return {**params, "module": FloatMLP}

    def dump(self, path: PathLike) -> None:
        """Save the fitted estimator to the file ``path``; ``load(path)`` gives it back.

        The file is a pickle of the settings, the trained weights and the compile
        inputset; loading compiles the circuit again, so predictions are the same in
        every ``fhe`` mode, and new keys are generated by the first ``fhe="execute"``.

        Parameters
        ----------
        path : str or os.PathLike
            The file to write (overwritten if it exists).

        Raises
        ------
        sklearn.exceptions.NotFittedError
            If the estimator has not been fitted.
        """
        check_is_fitted(self, "quantized_module_")
        with open(path, "wb") as file:
            pickle.dump(self, file, protocol=pickle.HIGHEST_PROTOCOL)

    def get_params_for(self, prefix):
        params = super().get_params_for(prefix)
        # the sizes come from the data for QATMLP and its subclasses
        if prefix == "module" and self._uses_qatmlp():
            params.setdefault("n_inputs", self.n_features_in_)
            params.setdefault("n_outputs", self.n_outputs_)
            binning = getattr(self, "input_binning_", None)
            if binning is not None:  # signed integers that hold every bin index exactly
                params.setdefault("n_input_bits", int(np.ceil(np.log2(max(binning.n_bins_)))) + 1)
                params.setdefault("input_scale", 1.0)
        for name, value in self._data_defaults(prefix).items():
            params.setdefault(name, value)
        return params

    def _data_defaults(self, prefix: str) -> dict:
        """Arguments of the module or the optimizer (``prefix``) whose default this estimator sets,
        for the data it is fitted on, where the user set none."""
        return {}

    def _uses_qatmlp(self) -> bool:
        """Whether the module is ``QATMLP`` or a subclass: the arguments set here are its."""
        return isinstance(self.module, type) and issubclass(self.module, QATMLP)

    def torch_compile(self, module, name):
        """torch.compile is not used: ``compile`` here means compiling to FHE."""
        return module

    @property
    def _default_callbacks(self):
        # where skorch's nets declare their defaults (the classifier its valid_acc): fit,
        # set_params and get_params all find them here, before fit as after
        skorch_defaults = [(name, EpochProgress() if name == "print_log" else callback)
                           for name, callback in scoring_the_network(super()._default_callbacks)]
        # early stopping after pruning, which leaves plain weights for it to save at each epoch's end
        return [*skorch_defaults, ("prune", PruneWeights()), ("one_cycle", OneCycle()),
                ("early_stopping", StopWhenValidationStalls())]

    def compile(self, X, configuration=None, p_error: Optional[float] = None,
                global_p_error: Optional[float] = None, rounding_threshold_bits="default", verbose: bool = False):
        """(Re)compile the trained network to FHE with ``X`` as inputset.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Data as the estimator was trained on: in a ``Pipeline``, transformed by the
            steps before it (``pipe[-1].compile(pipe[:-1].transform(X))``). Its first
            2000 rows are used.
        configuration : concrete.fhe.Configuration, optional
            Compiler settings.
        p_error, global_p_error : float, optional
            An error probability given here replaces the estimator's (give at most one).
        rounding_threshold_bits : "default", None, int, sequence or dict
            "default" keeps the estimator's ``rounding_threshold_bits`` (whose own
            "default" depends on the number of features).
        verbose : bool
            Print the per-layer report.

        Returns
        -------
        self

        Warns
        -----
        UserWarning
            If a feature of ``X`` is far from its range in the training data: its range
            and the training one do not overlap, or it reaches beyond the training range
            by more than the training range's width. Raw data given to an estimator
            trained behind a scaler does this.
        """
        check_is_fitted(self, "module_")
        X = self._check_X(X)
        self._warn_if_far_from_training(X)
        settings = self._compile_settings(configuration, p_error, global_p_error, rounding_threshold_bits)
        return self._compile(self._network_input(X), settings, verbose=verbose)

    def _warn_if_far_from_training(self, X: np.ndarray) -> None:
        if not hasattr(self, "data_min_"):
            return  # saved by a version that did not record the training range
        far = _far_features(X.min(axis=0), X.max(axis=0), self.data_min_, self.data_max_)
        if far.size == 0:
            return
        names = getattr(self, "feature_names_in_", range(X.shape[1]))
        first = far[0]
        warnings.warn(
            f"the X given to compile is far from the training data of {type(self).__name__} in "
            f"feature(s) {', '.join(str(names[i]) for i in far)} (feature {names[first]} spans "
            f"[{X[:, first].min():.4g}, {X[:, first].max():.4g}], against [{self.data_min_[first]:.4g}, "
            f"{self.data_max_[first]:.4g}] in fit): compile on data prepared as for fit; in a Pipeline, "
            "transform X with the pipeline's preceding steps: pipe[-1].compile(pipe[:-1].transform(X))",
            UserWarning, stacklevel=3,
        )

    def _compile_settings(self, configuration=None, p_error=None, global_p_error=None,
                          rounding_threshold_bits="default") -> dict:
        """The estimator's compilation settings, with those given here taking precedence.

        An error probability given here (``p_error`` or ``global_p_error``) replaces the
        estimator's.
        """
        if p_error is None and global_p_error is None:
            p_error, global_p_error = self._error_probabilities()
        return dict(
            configuration=configuration,
            rounding_threshold_bits=(self.rounding_threshold_bits if rounding_threshold_bits == "default"
                                     else rounding_threshold_bits),
            p_error=p_error,
            global_p_error=global_p_error,
        )

    def _default_rounding(self) -> dict:
        """Approximate rounding to 8 bits on data of few features, to 7 bits beyond.

        With few features, rounding the first layer's accumulators acts like coarser
        inputs, and the eighth bit is worth its cost; on wider data 7 bits keep the
        accuracy and halve the latency and the keys (8-bit lookups need polynomials of
        4096, 7-bit ones 2048: design notes).
        """
        return {"n_bits": 8 if self.n_features_in_ <= FEW_FEATURES else 7, "method": "approximate"}

    def _error_probabilities(self) -> tuple:
        """``(p_error, global_p_error)`` to compile with; a ``global_p_error`` replaces the default p_error."""
        if self.global_p_error is None:
            if self.p_error == DEFAULT_P_ERROR and getattr(self, "input_binning_", None) is not None:
                return BINNED_P_ERROR, None
            return self.p_error, None
        if self.p_error is not None and self.p_error != DEFAULT_P_ERROR:
            raise ValueError(
                f"p_error={self.p_error!r} and global_p_error={self.global_p_error!r} are both set: "
                "give one of them (set p_error=None to bound the whole circuit with global_p_error)"
            )
        return None, self.global_p_error

    def _compile(self, X: np.ndarray, settings: dict, verbose: bool = False):
        # a bounded inputset and the settings, kept so that unpickling rebuilds the same circuit
        self.compile_inputset_ = X[:MAX_COMPILE_SAMPLES]
        if settings["rounding_threshold_bits"] == "default":
            settings = {**settings, "rounding_threshold_bits": self._default_rounding()}
        self.compile_settings_ = settings
        self.module_.eval()
        with overflow_advice(OVERFLOW_HINT), narrowed_outputs(self._table_output_bits):
            self.quantized_module_ = compile_brevitas_qat_model(self.module_, self.compile_inputset_,
                                                                verbose=verbose, **settings)
        return self

    @property
    def fhe_circuit(self):
        check_is_fitted(self, "quantized_module_")
        return self.quantized_module_.fhe_circuit

    @property
    def fhe_cost_(self) -> FheCost:
        """What one encrypted prediction costs (``QuantizedModule.cost()``), known without keys.

        Computed from the compiled circuit, so it follows ``compile`` and ``load``.
        """
        check_is_fitted(self, "quantized_module_")
        return self.quantized_module_.cost()

    def _fhe_forward(self, X, fhe: str) -> np.ndarray:
        check_is_fitted(self, "quantized_module_")
        mode = FheMode.parse(fhe)
        X = self._network_input(self._check_X(X))
        execute = mode is FheMode.EXECUTE
        if execute and not self._has_keys():
            logger.info("generating FHE keys for %s (done once: the circuit keeps them)", type(self).__name__)
        # an int random_state also seeds the simulation's draws; otherwise they are fixed (seed 0)
        seed = self.random_state if isinstance(self.random_state, (int, np.integer)) else 0
        return self.quantized_module_.forward(X, fhe=mode.value, progress=self.verbose > 0 and execute,
                                              random_state=int(seed))

    def _has_keys(self) -> bool:
        keys = self.quantized_module_.fhe_circuit.keys
        return keys is not None and keys.are_generated

    def __getstate__(self):
        # Brevitas modules do not pickle (their quantizers are injector classes) and a
        # circuit holds native objects: keep the weights, rebuild both when loading.
        saved = {k: self.__dict__.pop(k) for k in ("module_", "optimizer_", "quantized_module_") if k in self.__dict__}
        try:
            state = super().__getstate__()
        finally:
            self.__dict__.update(saved)
        state["_fhe_module_state_"] = saved["module_"].state_dict() if "module_" in saved else None
        state["_fhe_recompile_"] = "quantized_module_" in saved
        return state

    def __setstate__(self, state):
        module_state = state.pop("_fhe_module_state_", None)
        recompile = state.pop("_fhe_recompile_", False)
        state.setdefault("scale_inputs", False)  # saved before scaling existed: trained on the values as they are
        super().__setstate__(state)
        if module_state is not None:
            self.initialize_module()
            self.module_.load_state_dict(module_state)
            self.initialize_optimizer()
        if recompile:
            self._compile(self.compile_inputset_, self.compile_settings_)


class NeuralNetClassifier(FheMixin, _ClassLabels, skorch.NeuralNetClassifier):
    """A QAT neural network classifier that predicts on encrypted data.

    Parameters
    ----------
    module : type of torch.nn.Module
        Default ``QATMLP``; set its options with ``module__n_hidden=...``,
        ``module__n_layers``, ``module__activation``, ``module__n_w_bits``,
        ``module__n_a_bits``, ``module__max_non_zero`` / ``module__n_accum_bits``, ...
        ``get_params()`` lists them with their defaults. On data of more than 2
        features, unless ``module__n_layers`` or ``module__n_hidden`` is set, ``fit``
        builds one hidden layer of 16 neurons with 4-bit weights, 4-bit activations and
        6-bit inputs (each of the three can be set), trained with Adam's
        ``weight_decay=1e-3`` (``optimizer__weight_decay``): a third of the encrypted
        cost of the two hidden layers at about the same accuracy.
    rounding_threshold_bits : "default", None, int, sequence or dict, default="default"
        Accumulators are rounded to this many bits before each table lookup (a
        sequence gives one bit-width per layer); None keeps them exact. "default"
        rounds approximately to 8 bits on data of 2 features or fewer, to 7 bits on
        wider data, where 7 bits keep the accuracy at half the latency and key size. Used, as the
        two below, by ``fit`` and ``compile``.
    p_error : float or None, default=0.3
        Probability that one table lookup errs (reads a neighbouring entry), which the
        simulation draws. With learned input bins (``input_bins``) the default is 0.01:
        a neighbouring entry is then another cell's prediction. Not used when
        ``global_p_error`` is set, which replaces it; setting both that and a
        ``p_error`` other than the default raises a ``ValueError``. With both None,
        concrete-python's default applies (a strict bound for the whole circuit, so
        larger keys).
    global_p_error : float or None, default=None
        Probability that any lookup of the circuit errs, for one sample.
    random_state : None, int or numpy.random.RandomState
        Seeds the initial weights and the shuffling; None uses torch's global seed.
        An int also seeds the mistakes ``fhe="simulate"`` draws (otherwise seed 0):
        a row's draws depend on its values and the seed, not on the rest of the batch.
    input_bins : "auto", None or int, default="auto"
        Feed the network each feature's bin instead of its value, with this many bins
        per feature, whose edges ``fit`` places where the labels change
        (``input_binning_``). So few input combinations make the compiled network one
        small table lookup per class (tabulation): about ten times faster, with keys a
        fifth the size. "auto" bins data of 2 features or fewer (8 bins each; 64 for
        one feature); None never bins. The client applies the bins in the clear.
    scale_inputs : bool, default=True
        Unless it reads bins, the network reads each feature standardized to mean 0
        and variance 1 (``input_scaler_``, learned by ``fit``), so that its one input
        quantizer serves features of any scale; the client scales in the clear, at no
        cost in FHE. False feeds the values as they are.
    classes : array-like, optional
        All labels, if ``y`` may not show every one of them.
    **kwargs :
        skorch's own (``lr``, ``max_epochs``, ``batch_size``, ``optimizer``,
        ``callbacks``, ``train_split``, ``verbose``, ``device``, ...), and the settings
        of the training callbacks ``prune`` (``callbacks__prune__max_non_zero``) and
        ``one_cycle`` (``callbacks__one_cycle__pct_start``; ``callbacks__one_cycle=None``
        keeps the learning rate constant).

    Attributes
    ----------
    quantized_module_ : QuantizedModule
        The compiled network; ``fhe_circuit`` is its circuit.
    fhe_cost_ : FheCost
        Predicted seconds per encrypted sample and of key generation, key sizes,
        bootstraps and bit-widths of the compiled circuit (see ``QuantizedModule.cost``).
    data_min_, data_max_ : ndarray of shape (n_features,)
        Per feature, the lowest and highest value ``fit`` trained on; ``compile``
        warns when its ``X`` is far from them.
    input_binning_ : sklearn.preprocessing.KBinsDiscretizer or None
        The learned bins (``input_bins``), applied to every ``X`` before the network;
        ``quantized_module_`` takes the bin indices.
    input_scaler_ : sklearn.preprocessing.StandardScaler or None
        Each feature's mean and spread (``scale_inputs``), applied to every ``X`` before
        the network when it reads values, not bins.

    Examples
    --------
    >>> clf = NeuralNetClassifier(max_epochs=5).fit(X, y)      # doctest: +SKIP
    >>> clf.predict(X[:2], fhe="execute")                       # doctest: +SKIP
    >>> clf.dump("clf.pkl"); load("clf.pkl").predict(X[:2])    # doctest: +SKIP
    """

    _float_twin = FloatNeuralNetClassifier
    _auto_bins = True
    _table_output_bits = 6

    def __init__(self, module=QATMLP, *args, criterion=torch.nn.CrossEntropyLoss, **kwargs):
        super().__init__(module, *args, criterion=criterion, **kwargs)

    def _data_defaults(self, prefix: str) -> dict:
        if prefix not in ("module", "optimizer") or getattr(self, "n_features_in_", 0) <= FEW_FEATURES:
            return {}
        given = skorch.NeuralNet.get_params_for(self, "module")
        # a depth or widths the user set keep QATMLP's defaults for the rest, and no weight decay
        if "n_layers" in given or "n_hidden" in given or not self._uses_qatmlp():
            return {}
        if prefix == "module":
            return dict(WIDE_NETWORK)
        return {"weight_decay": WIDE_WEIGHT_DECAY} if self.optimizer is torch.optim.Adam else {}

    def partial_fit(self, X, y, classes=None, **fit_params):
        """Train the current network further on ``(X, y)`` (start one if none), then recompile on ``X``.

        Parameters
        ----------
        X, y, **fit_params :
            As for ``fit``; ``X`` must have the features of the first call.
        classes : array-like, optional
            Every label, for a first call whose ``y`` does not show them all.

        Returns
        -------
        self
        """
        return self._train(X, y, restart=False, classes=classes, **fit_params)

    def predict_proba(self, X, fhe: str = "disable") -> np.ndarray:
        """Class probabilities: the softmax, computed in the clear, of the dequantized logits.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        fhe : {"disable", "simulate", "execute"}, default="disable"
            "disable" runs the integer network in the clear; "simulate" adds FHE's
            effects in the clear (bit-width wrap-around, and the bootstraps' mistakes:
            p_error's and approximate rounding's); "execute" encrypts each sample, runs
            the circuit and decrypts. The first "execute" generates the keys, which
            takes seconds: logged, and printed when ``verbose > 0``.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            In the order of ``classes_``.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Before ``fit``.
        ValueError
            If ``X`` has the wrong number of features or holds NaN or inf, or if
            ``fhe`` is not one of the three modes.
        """
        return softmax(self._fhe_forward(X, fhe), axis=1)

    def predict(self, X, fhe: str = "disable") -> np.ndarray:
        """Predicted labels; see ``predict_proba`` for the parameters and errors.

        Returns
        -------
        ndarray of shape (n_samples,)
            Labels from ``classes_``.
        """
        indices = self._fhe_forward(X, fhe).argmax(axis=1)
        return self.classes_[indices]


# the regressor's network adds to a ridge regression: below it on small linear data otherwise (design notes)
LINEAR_TERM = True


class NeuralNetRegressor(FheMixin, _Targets, skorch.NeuralNetRegressor):
    """A QAT neural network regressor that predicts on encrypted data.

    Takes the parameters of ``NeuralNetClassifier`` (but ``classes``; and its
    ``input_bins="auto"`` never bins here: piecewise-constant inputs cost a smooth
    target accuracy, give an int to bin), and:

    Parameters
    ----------
    normalize_y : bool, default=True
        Train on each target column scaled to mean 0 and variance 1 (``target_mean_``,
        ``target_scale_``); predictions, in every ``fhe`` mode and from saved models,
        are in the units of ``y``. False trains on ``y`` as given.

    Notes
    -----
    ``module__linear_term`` defaults to True here (False for the classifier): before
    training, ``fit`` sets the network's linear term to a ridge regression (``RidgeCV``)
    of the targets on all its rows, and the MLP learns what it leaves. On small, mostly
    linear data the network alone, trained on the rows that early stopping does not hold
    out, falls below the linear model. In FHE the sum keeps the wider of the two
    accumulators (the term's, on the benchmarks' data) exact and looks the other up on
    its scale, one lookup per target. ``module__linear_term=False`` gives the MLP alone.
    """

    _float_twin = FloatNeuralNetRegressor

    def __init__(self, module=QATMLP, *args, criterion=torch.nn.MSELoss, normalize_y: bool = True, **kwargs):
        super().__init__(module, *args, criterion=criterion, normalize_y=normalize_y, **kwargs)

    def _module_defaults(self) -> dict:
        defaults = super()._module_defaults()
        if self._uses_qatmlp():
            defaults["module__linear_term"] = LINEAR_TERM
        return defaults

    def _data_defaults(self, prefix: str) -> dict:
        return {"linear_term": LINEAR_TERM} if prefix == "module" and self._uses_qatmlp() else {}

    def _initialize_network(self, X: np.ndarray, y: np.ndarray) -> None:
        super()._initialize_network(X, y)
        fit_linear_term(self.module_, X, y)

    def __setstate__(self, state):
        module_state = state.get("_fhe_module_state_")
        if module_state is not None and not any(key.startswith("linear_term_layer") for key in module_state):
            # saved without a linear term (by a version before it, or with it off): rebuilt without one
            state.setdefault("module__linear_term", False)
        super().__setstate__(state)

    def _compile(self, X: np.ndarray, settings: dict, verbose: bool = False):
        super()._compile(X, settings, verbose=verbose)
        # the network learnt normalized targets: dequantize straight to y's units, so the
        # module, saved models and clients all predict in them
        if not hasattr(self, "target_mean_"):
            return self  # saved by a version that trained on y as given
        program = self.quantized_module_.program
        program.outputs = [out.followed_by(self.target_scale_, self.target_mean_) for out in program.outputs]
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True  # one output unit per column of y
        return tags

    def partial_fit(self, X, y, **fit_params):
        """Train the current network further on ``(X, y)`` (start one if none), then recompile on ``X``.

        Parameters
        ----------
        X, y, **fit_params :
            As for ``fit``; the features and targets of the first call.

        Returns
        -------
        self
        """
        return self._train(X, y, restart=False, **fit_params)

    @property
    def predict_proba(self):
        """Not available: a regressor has no class probabilities (skorch's method is hidden)."""
        raise AttributeError(f"{type(self).__name__} has no predict_proba: it predicts values, use predict")

    def predict(self, X, fhe: str = "disable") -> np.ndarray:
        """Predicted values.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        fhe : {"disable", "simulate", "execute"}, default="disable"
            See ``NeuralNetClassifier.predict_proba``.

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_outputs)
            Shaped like the ``y`` of ``fit``.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Before ``fit``.
        ValueError
            If ``X`` has the wrong number of features or holds NaN or inf, or if
            ``fhe`` is not one of the three modes.
        """
        return self._shaped(self._fhe_forward(X, fhe))


def load(path: PathLike) -> FheMixin:
    """Load an estimator saved with ``dump``, compiled and ready to predict.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by ``NeuralNetClassifier.dump`` or ``NeuralNetRegressor.dump``.

    Returns
    -------
    NeuralNetClassifier or NeuralNetRegressor

    Raises
    ------
    TypeError
        If the file holds something else.

    Warnings
    --------
    The file is a pickle, and loading a pickle can run code: load only files you trust.
    """
    with open(path, "rb") as file:
        model = pickle.load(file)
    if not isinstance(model, FheMixin):
        raise TypeError(
            f"{os.fspath(path)!r} holds a {type(model).__name__}, not an estimator saved with dump: "
            "load it with pickle, or save the estimator with its dump method"
        )
    return model
