"""scikit-learn estimators and pipelines -> ONNX through skl2onnx, on one float32 feature matrix.

Classifiers are converted without ZipMap, so they answer with two plain tensors, ``label``
[n] and ``probabilities`` [n, classes], which any V2 client can read.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from nbdeploy._errors import ExportError, InputError
from nbdeploy._format import first_line
from nbdeploy._tensors import check_finite, sample_parts
from nbdeploy.exporters import _onnx
from nbdeploy.exporters.base import Exported
from nbdeploy.vocabulary import safe_name

INPUT_NAME = "input"


def features(sample: Any) -> np.ndarray:
    """The sample as one float32 matrix [n_samples, n_features]."""
    parts = sample_parts(sample)
    if isinstance(parts, Mapping):
        parts = list(parts.values())
    if len(parts) != 1:
        raise InputError(
            f"a scikit-learn model takes one 2-D feature array; the sample has {len(parts)} inputs"
        )
    array = parts[0]
    if array.ndim != 2:
        raise InputError(
            "a scikit-learn model takes a 2-D array [n_samples, n_features]; the sample has"
            f" shape {list(array.shape)} (for one row use x.reshape(1, -1))"
        )
    try:
        matrix = np.ascontiguousarray(array, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"the sample must be numeric features convertible to float32; got {array.dtype}"
        ) from exc
    check_finite([matrix])
    return matrix


def _outputs(model: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """The original's answers, keyed by the ONNX output names skl2onnx gives them."""
    from sklearn.base import is_classifier, is_regressor

    if is_classifier(model):
        result = {"label": np.asarray(model.predict(x))}
        if hasattr(model, "predict_proba"):
            result["probabilities"] = np.asarray(model.predict_proba(x))
        return result
    if is_regressor(model) or not hasattr(model, "transform"):
        return {"variable": np.asarray(model.predict(x))}
    return {"variable": np.asarray(model.transform(x))}


def _convert(model: Any, n_features: int, *, opset: int | None, classifier: bool) -> Any:
    """Convert with ZipMap off; classifiers that never emit a ZipMap reject that option."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    attempts = [{id(model): {"zipmap": False}}, None] if classifier else [None]
    for options in attempts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return convert_sklearn(
                    model,
                    initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
                    options=options,
                    target_opset=opset,
                )
        except NameError as exc:
            if options is None or "zipmap" not in str(exc):
                raise _conversion_error(model, exc) from exc
        except Exception as exc:
            raise _conversion_error(model, exc) from exc
    raise AssertionError("unreachable: the last attempt returns or raises")


def _conversion_error(model: Any, exc: BaseException) -> ExportError:
    return ExportError(f"skl2onnx cannot convert {type(model).__name__}: {first_line(exc)}")


class SklearnExporter:
    """scikit-learn estimators and pipelines, through skl2onnx with ZipMap off."""

    framework = "sklearn"

    def detect(self, model: Any) -> bool:
        return hasattr(model, "fit") and any(
            cls.__module__.startswith("sklearn.") for cls in type(model).__mro__
        )

    def export(self, model: Any, sample: Any, *, opset: int | None) -> Exported:
        """One float32 feature matrix in; ``label`` and ``probabilities`` out for classifiers."""
        import sklearn
        from sklearn.base import is_classifier, is_regressor
        from sklearn.exceptions import NotFittedError
        from sklearn.utils.validation import check_is_fitted

        x = features(sample)
        try:
            check_is_fitted(model)
        except NotFittedError as exc:
            raise ExportError(
                f"the {type(model).__name__} is not fitted yet: call fit() first"
            ) from exc
        expected = getattr(model, "n_features_in_", None)
        if expected is not None and x.shape[1] != expected:
            raise InputError(
                f"the {type(model).__name__} was fitted on {expected} features; the sample has"
                f" shape {list(x.shape)} ({x.shape[1]} features)"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                reference = _outputs(model, x)
        except Exception as exc:
            raise InputError(
                f"the {type(model).__name__} rejected the sample of shape {list(x.shape)}: {exc}"
            ) from exc
        proto = _convert(model, x.shape[1], opset=opset, classifier=is_classifier(model))
        renames = {}
        if "variable" in reference:
            renames["variable"] = "prediction" if is_regressor(model) else "output"
            reference = {renames["variable"]: reference["variable"]}
        _onnx.rename_io(_onnx.tidy(proto), renames)
        metadata: dict[str, Any] = {"exporter": "skl2onnx", "versions": self.versions()}
        labels = None
        classes = getattr(model, "classes_", None)
        if is_classifier(model) and classes is not None:
            metadata["classes"] = np.asarray(classes).tolist()
            labels = [str(c) for c in np.asarray(classes).tolist()]
        return Exported(
            proto=proto,
            feeds={INPUT_NAME: x},
            reference=reference,
            framework=self.framework,
            framework_version=sklearn.__version__,
            default_name=safe_name(type(model).__name__),
            metadata=metadata,
            labels=labels,
        )

    def eager_runner(self, model: Any, sample: Any) -> Callable[[], Any]:
        """A zero-argument callable: ``predict_proba`` for classifiers that have it, else ``predict``."""
        x = features(sample)
        method = getattr(model, "predict_proba", None) or getattr(model, "predict", None)
        if method is None:
            method = model.transform
        return lambda: method(x)

    def versions(self) -> dict[str, str]:
        import onnx
        import onnxruntime
        import sklearn

        versions = {"sklearn": sklearn.__version__, "onnx": onnx.__version__}
        versions["onnxruntime"] = onnxruntime.__version__
        with contextlib.suppress(ImportError):
            import skl2onnx

            versions["skl2onnx"] = skl2onnx.__version__
        return versions


EXPORTER = SklearnExporter()
