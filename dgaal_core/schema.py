"""Compatibility alias: the pool schema lives in :mod:`dgaal_core.pool.schema`
(``from dgaal_core.schema import State`` keeps working)."""

from dgaal_core.pool.schema import FORMAT, ORIGIN_NAMES, STATE_NAMES, VERSION, Origin, State

__all__ = ["FORMAT", "ORIGIN_NAMES", "STATE_NAMES", "VERSION", "Origin", "State"]
