"""The adapter registry: SQLite metadata plus the PEFT files of every adapter version."""

from specialize.registry.store import (
    AdapterNotFoundError,
    AdapterRecord,
    AdapterRegistry,
    IncompatibleAdapterError,
    RegistryError,
    check_compatible,
    check_name,
    data_home,
    default_registry_dir,
    inspect_source,
)

__all__ = [
    "AdapterNotFoundError",
    "AdapterRecord",
    "AdapterRegistry",
    "IncompatibleAdapterError",
    "RegistryError",
    "check_compatible",
    "check_name",
    "data_home",
    "default_registry_dir",
    "inspect_source",
]
