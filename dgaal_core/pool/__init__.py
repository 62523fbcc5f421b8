"""The pool store: one HDF5 index (labels, states, origins, round log) over append-only image
shards. Imports numpy and h5py only (never torch).

``schema`` names the layout, ``reader`` reads a pool, ``writer`` is the one module that writes
one (with ``lock``, ``shards`` and ``index`` below it), ``check`` verifies one.
"""

from dgaal_core.pool.reader import PoolReader
from dgaal_core.pool.schema import Origin, State

__all__ = ["Origin", "PoolReader", "State"]
