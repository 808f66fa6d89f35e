"""User-facing errors: one line that names the bad value and what would have been valid."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DatakdError(Exception):
    """An error caused by user input (config, names, paths); the CLI prints it as one line, no traceback.

    `exit_code` is what the CLI exits with: 2 for bad input; subclasses for faults of the machine (storage,
    memory) carry their own, so that a requeue script can tell "fix the input" from "fix the machine".
    """

    exit_code: int = 2


class ConfigError(DatakdError):
    """A malformed or unknown configuration key or value."""


class InertSettingWarning(UserWarning):
    """A setting the user gave has no effect on training (e.g. the weight of a term that ignores it)."""


class NonFiniteLossError(DatakdError):
    """A loss term became NaN/Inf; the run stops and the last good checkpoint is kept."""


def choice_error(
    kind: str, value: object, choices: Iterable[str], cls: type[DatakdError] = DatakdError
) -> DatakdError:
    """Build an error for `value` not being one of `choices`, with a did-you-mean hint."""
    options = sorted(choices)
    close = difflib.get_close_matches(str(value), options, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return cls(f"unknown {kind} {value!r}{hint}; valid choices: {', '.join(options) or '(none)'}")
