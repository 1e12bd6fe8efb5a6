"""What can go wrong with the adapter registry, as errors a user reads."""

from __future__ import annotations

from specialize.errors import SpecializeError


class RegistryError(SpecializeError):
    """An adapter cannot be added, found or used."""

    exit_code = 2


class AdapterNotFoundError(RegistryError):
    pass


class IncompatibleAdapterError(RegistryError):
    """The adapter was trained on other base weights than the ones it would run on."""
