"""Making a pool from an image folder, a keras-style ``.npz`` or scikit-learn's digits.

Imports numpy, h5py and PIL only (never torch).
"""

from dgaal_core.ingest.create import (
    IngestResult,
    MemorySource,
    Source,
    class_names_from,
    create_pool,
    load_digits,
    open_folder,
    open_npz,
    open_source,
)

__all__ = [
    "IngestResult",
    "MemorySource",
    "Source",
    "class_names_from",
    "create_pool",
    "load_digits",
    "open_folder",
    "open_npz",
    "open_source",
]  # fmt: skip
