"""One error family, so every surface can catch nbdeploy failures and show one readable line."""

from __future__ import annotations


class NbdeployError(Exception):
    """Base of every error nbdeploy raises on purpose; the message is meant for the user."""


class ExportError(NbdeployError):
    """The model could not be exported to ONNX, or the export disagrees with the original."""


class ParityError(ExportError):
    """The exported model's outputs differ from the original's beyond tolerance."""


class QuantizeError(NbdeployError):
    """Quantization was asked for in a way that cannot work."""


class BenchmarkError(NbdeployError):
    """A benchmark could not be run on what it was given."""


class RepositoryError(NbdeployError):
    """The model repository or the store is missing something or refused a write."""


class DeployError(NbdeployError):
    """An endpoint could not be built, started or reached."""


class InputError(NbdeployError):
    """A sample or request does not match what the model expects."""


class InferenceError(NbdeployError):
    """The endpoint answered an inference request with an error status (it was reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
