"""Named errors of export and serving (torch-free). The CLI prints each as one ``error:`` line."""

from __future__ import annotations

from dgaal_core.errors import DgaalError


class ModelFileError(DgaalError):
    """A model file is missing, not ONNX, or not a dgaal model of the expected kind."""


class ModelMismatchError(DgaalError):
    """A model does not fit the data: image shape or channels differ from the pool's."""


class ProviderError(DgaalError):
    """The requested execution provider (e.g. CUDA) is not available on this machine."""


class ExportParityError(DgaalError):
    """An exported graph disagrees with PyTorch beyond the tolerance; the files are removed."""


class CheckpointNotFoundError(DgaalError):
    """No checkpoint to export (no round has finished yet, or the given file is missing)."""
