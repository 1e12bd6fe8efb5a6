"""User-facing errors.

Everything a user can get wrong (a file, a config key, a model reference, an HTTP body) raises a
`SpecializeError` whose message is complete on its own: the CLI prints it without a traceback and
exits with `exit_code`. Library callers can catch the precise subclass.
"""

from __future__ import annotations


class SpecializeError(Exception):
    """Base class of every error meant to be read by a user."""

    exit_code: int = 1


class DataError(SpecializeError):
    """The user's examples cannot be read or normalised (names file, line and field)."""

    exit_code = 2


class ConfigError(SpecializeError):
    """A config file or option is invalid."""

    exit_code = 2


class ModelNotFoundError(SpecializeError):
    """A model reference does not resolve to weights on this machine."""

    exit_code = 2


class RunError(SpecializeError):
    """A run directory is missing, incomplete or inconsistent."""

    exit_code = 2


class ConstraintError(SpecializeError):
    """An output constraint (a label set, a JSON schema, a `response_format`) is invalid or cannot be
    enforced; the message names the field or gives the grammar compiler's reason."""

    exit_code = 2
