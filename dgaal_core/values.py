"""Values a user gives, checked in one place for every command and API: seeds, derived seeds,
and sizes given as "a fraction or a count" (``--budget``, ``--initial``, ``--step``, ...).

Pure Python (no numpy): the command line checks its options with it before loading anything.
"""

from __future__ import annotations

import hashlib
import json
import math

from dgaal_core.errors import ConfigError, DgaalError

MAX_SEED = 2**63 - 1  # seeds must fit torch's and HDF5's signed 64-bit integers


def check_seed(seed: object, what: str = "seed") -> int:
    """``seed`` if it is an integer in ``[0, MAX_SEED]``; else one clear :class:`ConfigError`."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{what} {seed}: expected an integer in 0..{MAX_SEED}")
    return seed


def derive_seed(seed: int, *keys: str | int) -> int:
    """A 63-bit seed derived from ``seed`` and a path of keys (e.g. ``(seed, "task", round)``).

    Each consumer of randomness gets its own stream, all flowing from the one seed the user set.
    """
    text = json.dumps([seed, *keys])
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") >> 1


def check_size(
    value: object, what: str, *, zero_ok: bool = False, error: type[DgaalError] = ConfigError
) -> float:
    """A size given as a fraction below 1 or a whole count >= 1, as a float; anything else is
    one ``error`` (a :class:`ConfigError` by default) naming ``what`` (``zero_ok``: 0 means
    "none")."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    number = float(value) if ok else math.nan  # type: ignore[arg-type]
    ok = ok and math.isfinite(number) and (number > 0 or (zero_ok and number == 0))
    if not ok or (number >= 1 and number != int(number)):
        bound = ">= 0" if zero_ok else "> 0"
        raise error(
            f"{what} {value}: expected a number {bound} (a fraction below 1 or a whole count)"
        )
    return number


def parse_size(
    text: str, what: str, *, zero_ok: bool = False, error: type[DgaalError] = ConfigError
) -> float:
    """:func:`check_size` of a command-line string (``"0.05"``, ``"2500"``)."""
    try:
        value = float(text)
    except ValueError:
        raise error(f"{what} {text}: expected a fraction (0.05) or a count (2500)") from None
    return check_size(value, what, zero_ok=zero_ok, error=error)


def size_of(size: float, total: int) -> int:
    """The count a checked size means out of ``total``: a fraction is rounded once, a count is
    itself."""
    return round(size * total) if size < 1 else int(size)


def plural(count: int, noun: str) -> str:
    """``1 answer``, ``2 answers``: a count with its noun (English, regular plurals)."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
