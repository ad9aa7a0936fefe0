"""One check shared by every configuration section read from a dict (YAML, checkpoints).

A misspelt key in a config file (``lr_rate`` for ``lr``) must stop the run with a message that
names it, not be ignored or end in a ``TypeError`` from the dataclass constructor. The
dataclasses of :mod:`bsafusion.model.config`, :mod:`bsafusion.training.losses` and
:mod:`bsafusion.training.train` all call :func:`check_known_keys` before building themselves.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Collection, Mapping

__all__ = ["check_known_keys"]


def check_known_keys(
    data: Mapping[str, Any],
    known: type | Collection[str],
    what: str,
    error: type[Exception] = ValueError,
) -> None:
    """Raise ``error("unknown <what>: [<sorted keys>]")`` if ``data`` has a key not in ``known``.

    Parameters
    ----------
    data:
        The mapping about to be turned into a config object.
    known:
        A dataclass (its field names are the known keys) or a collection of key names.
    what:
        What the keys are, for the message, e.g. ``"model config keys"``.
    error:
        Exception class to raise (``ValueError`` for the config classes themselves,
        :class:`bsafusion.errors.InputError` where the keys come straight from the user).

    Examples
    --------
    >>> check_known_keys({"a": 1}, {"a", "b"}, "keys")
    >>> check_known_keys({"c": 1, "a": 2}, {"a", "b"}, "keys")
    Traceback (most recent call last):
    ...
    ValueError: unknown keys: ['c']
    """
    names = {f.name for f in dataclasses.fields(known)} if isinstance(known, type) else set(known)
    unknown = set(data) - names
    if unknown:
        raise error(f"unknown {what}: {sorted(unknown)}")
