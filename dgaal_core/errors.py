"""Named exceptions for errors a user can cause.

The CLI turns every :class:`DgaalError` into one clear line on stderr and a non-zero exit code;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class DgaalError(Exception):
    """Base class of every error a user can cause (bad input, busy pool, ...)."""


class PoolFormatError(DgaalError):
    """The file is not a dgaal pool, or of an unsupported version, or damaged."""


class PoolLockedError(DgaalError):
    """Another process holds the pool's writer lock."""


class PoolExistsError(DgaalError):
    """The output pool already exists and overwriting was not asked for."""


class IngestError(DgaalError):
    """The source data for a new pool is unusable (names the file and what was expected)."""


class EmptyPoolError(DgaalError):
    """An operation needs rows of some state and the pool has none."""


class PoolExhaustedError(DgaalError):
    """More rows were asked for than the pool has candidates."""


class PoolUpdateError(DgaalError):
    """A requested pool mutation is invalid (unknown ids, bad labels, wrong shapes)."""


class ConfigError(DgaalError, ValueError):
    """A setting or configuration value is invalid (names the field and what was expected)."""


class AnswersError(DgaalError):
    """A person's answers for ``dgaal label`` (a filled-in ``queries.csv`` or a Label Studio
    export) are invalid: one line says which file, row or task, and why."""


class StorageError(DgaalError):
    """A file could not be written: a full disk, a read-only file system, no permission, a
    folder where a file should be (names the path and the cause)."""


class PoolCopyError(DgaalError):
    """Two index files beside each other are the same pool (a copy made with ``cp``)."""
