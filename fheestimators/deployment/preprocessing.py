"""The data owner's preprocessing: the steps of a fitted ``Pipeline`` before our estimator.

They run on the client, in the clear, before quantization; the server never sees them.
The client artefact carries them as ``skops.io`` bytes (no pickle), limited to the
scikit-learn transformers listed in ``TRUSTED``: scalers, imputers, encoders and the
containers that combine them. Anything else, ``FunctionTransformer`` first, is refused
at ``save`` and again when a client reads the artefact, since it would be code (or a
type whose loading runs code) that the client executes.
"""
from __future__ import annotations

import io
import zipfile
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from .container import PayloadError

MEMBER = "preprocessing.skops"

_CONTAINERS = {
    "sklearn.pipeline.Pipeline",
    "sklearn.pipeline.FeatureUnion",
    "sklearn.compose._column_transformer.ColumnTransformer",
    "sklearn.compose._column_transformer.make_column_selector",
}
_TRANSFORMERS = {
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.preprocessing._data.MinMaxScaler",
    "sklearn.preprocessing._data.MaxAbsScaler",
    "sklearn.preprocessing._data.RobustScaler",
    "sklearn.preprocessing._data.QuantileTransformer",
    "sklearn.preprocessing._data.PowerTransformer",
    "sklearn.preprocessing._data.Normalizer",
    "sklearn.preprocessing._encoders.OneHotEncoder",
    "sklearn.preprocessing._encoders.OrdinalEncoder",
    "sklearn.preprocessing._discretization.KBinsDiscretizer",
    "sklearn.preprocessing._polynomial.PolynomialFeatures",
    "sklearn.impute._base.SimpleImputer",
    "sklearn.impute._base.MissingIndicator",
    "sklearn.feature_selection._variance_threshold.VarianceThreshold",
    "sklearn.decomposition._pca.PCA",
}
#: the estimator types a client artefact's preprocessing may hold
TRUSTED = frozenset(_CONTAINERS | _TRANSFORMERS)
# what skops does not trust by default but our transformers' state holds (numpy's scalar types too)
_SKOPS_EXTRA_TRUSTED = ("numpy.dtype", "sklearn.compose._column_transformer.make_column_selector")
_WHY_NOT = {
    "sklearn.preprocessing._function_transformer.FunctionTransformer":
        "it holds a function, which would be code every client runs",
    "sklearn.impute._knn.KNNImputer": "it keeps the training rows, which would ship them to every client",
    "builtins.function": "a function selecting columns would be code every client runs",
}


def qualified_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def steps(preprocessing: Any) -> Iterator[Any]:
    """Every estimator in ``preprocessing``, containers included (depth first)."""
    yield preprocessing
    children = [step for _, step in _named_children(preprocessing)]
    if hasattr(preprocessing, "transformers"):  # a ColumnTransformer's column selectors are objects too
        children += [columns for _, _, columns in preprocessing.transformers if callable(columns)]
    for child in children:
        if not _skipped(child):
            yield from steps(child)


def _named_children(preprocessing: Any) -> list[tuple[str, Any]]:
    """``(name, step)`` of a container: a Pipeline's, a FeatureUnion's, or a ColumnTransformer's (fitted
    ones first, remainder included); none for anything else."""
    if hasattr(preprocessing, "steps"):  # Pipeline
        return list(preprocessing.steps)
    if hasattr(preprocessing, "transformer_list"):  # FeatureUnion
        return list(preprocessing.transformer_list)
    if hasattr(preprocessing, "transformers"):  # ColumnTransformer
        fitted = getattr(preprocessing, "transformers_", None)
        return [(name, step) for name, step, _ in (fitted if fitted is not None else preprocessing.transformers)]
    return []


def _skipped(step: Any) -> bool:
    return isinstance(step, str) and step in ("passthrough", "drop")


def check_trusted(preprocessing: Any) -> None:
    """Refuse preprocessing that holds a type outside ``TRUSTED``, naming it and why."""
    for step in steps(preprocessing):
        name = qualified_name(step)
        if name not in TRUSTED:
            reason = _WHY_NOT.get(name, "only scikit-learn's scalers, imputers, encoders and the containers "
                                        "that combine them are shipped to clients")
            raise TypeError(
                f"the pipeline's preprocessing holds a {type(step).__name__}, which cannot be deployed: {reason}. "
                "Trusted steps: " + ", ".join(sorted(n.rsplit(".", 1)[1] for n in TRUSTED)))


def check_fitted(preprocessing: Any) -> None:
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    for step in steps(preprocessing):
        if qualified_name(step) in _CONTAINERS and not hasattr(step, "transformers"):
            continue  # a Pipeline or FeatureUnion is fitted when its steps are
        try:
            check_is_fitted(step)
        except NotFittedError:
            raise ValueError(f"the pipeline's {type(step).__name__} is not fitted: call fit on the "
                             "pipeline before saving it") from None


def dumps(preprocessing: Any) -> bytes:
    """The checked, fitted preprocessing as ``skops.io`` bytes."""
    import skops.io

    check_trusted(preprocessing)
    check_fitted(preprocessing)
    return skops.io.dumps(preprocessing)


def loads(data: bytes, max_bytes: int = 64 << 20) -> Any:
    """Preprocessing read from a client artefact: only trusted types are built.

    ``data`` was hashed into the model's fingerprint before this is called; the checks
    here hold even so: stored zip members only (nothing to decompress), skops' own type
    check with nothing trusted beyond ``_SKOPS_EXTRA_TRUSTED``, then ``TRUSTED``.
    """
    import skops.io

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
    except zipfile.BadZipFile as error:
        raise PayloadError(f"the client artefact's preprocessing is not skops data ({error})") from None
    if any(info.compress_type != zipfile.ZIP_STORED for info in infos) or sum(i.file_size for i in infos) > max_bytes:
        raise PayloadError("the client artefact's preprocessing holds compressed or oversized members, which "
                           "save never writes: the artefact was altered")
    found = skops.io.get_untrusted_types(data=data)
    untrusted = [name for name in found if not _skops_extra_trusted(name)]
    if untrusted:
        raise PayloadError(f"the client artefact's preprocessing holds types that are not trusted: {untrusted[:5]}")
    try:
        preprocessing = skops.io.loads(data, trusted=found)
    except Exception as error:  # skops reports malformed data with many exception types
        raise PayloadError(f"the client artefact's preprocessing cannot be read ({type(error).__name__}: "
                           f"{str(error)[:200]})") from None
    try:
        check_trusted(preprocessing)
    except TypeError as error:
        raise PayloadError(f"the client artefact: {error}") from None
    return preprocessing


def _skops_extra_trusted(name: str) -> bool:
    if name in _SKOPS_EXTRA_TRUSTED:
        return True
    module, _, attribute = name.rpartition(".")
    kind = getattr(np, attribute, None) if module == "numpy" else None
    return isinstance(kind, type) and issubclass(kind, np.generic)  # numpy.float64, numpy.number...


def describe(preprocessing: Optional[Any]) -> list[str]:
    """The preprocessing's step names, for people (``fheestimators info``)."""
    if preprocessing is None:
        return []
    return [type(step).__name__ for step in steps(preprocessing)]


def outline(preprocessing: Any) -> str:
    """The preprocessing's structure in one line, for people: ``A → B``, ``ColumnTransformer(name: A → B; ...)``."""
    children = _named_children(preprocessing)
    if hasattr(preprocessing, "steps"):  # Pipeline
        return " → ".join(outline(step) for _, step in children if not _skipped(step))
    if hasattr(preprocessing, "transformer_list") or hasattr(preprocessing, "transformers"):
        parts = [f"{name}: {step if _skipped(step) else outline(step)}" for name, step in children]
        return f"{type(preprocessing).__name__}({'; '.join(parts)})"
    return type(preprocessing).__name__


def checked_frame(X: Any, feature_names: Sequence[str]) -> Any:
    """``X`` as a DataFrame with exactly the fitted columns, in the fitted order.

    A numpy array is refused (the pipeline was fitted on named columns, and rows of
    another order would be read silently wrong); missing and extra columns are named.
    """
    if not hasattr(X, "columns"):
        raise TypeError(f"this model was fitted on a pandas DataFrame: pass one with the columns "
                        f"{_names(feature_names)}, not a {type(X).__name__}")
    columns = [str(c) for c in X.columns]
    missing = [name for name in feature_names if name not in columns]
    extra = [name for name in columns if name not in set(feature_names)]
    if missing or extra:
        parts = ([f"missing column(s) {_names(missing)}"] if missing else []) + \
                ([f"unexpected column(s) {_names(extra)}"] if extra else [])
        raise ValueError(f"the DataFrame's columns are not those the model was fitted on: {'; '.join(parts)}")
    if len(set(columns)) != len(columns):
        raise ValueError("the DataFrame has duplicate column names")
    X = X.copy(deep=False)
    X.columns = columns
    return X[list(feature_names)]


def _names(names: Sequence[str], most: int = 10) -> str:
    shown = ", ".join(repr(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def split(model: Any) -> tuple[Optional[Any], Any]:
    """``(preprocessing, final step)`` of a ``Pipeline``; ``(None, model)`` for anything else.

    The preprocessing (every step but the last) is checked: trusted types only, fitted.
    """
    from sklearn.pipeline import Pipeline

    if not isinstance(model, Pipeline):
        return None, model
    final = model.steps[-1][1]
    if len(model.steps) == 1:
        return None, final
    leading = model[:-1]
    check_trusted(leading)
    check_fitted(leading)
    return leading, final
