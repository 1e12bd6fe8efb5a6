"""The adapter registry: SQLite metadata plus the PEFT files of every adapter version."""

from specialize.registry.errors import AdapterNotFoundError, IncompatibleAdapterError, RegistryError
from specialize.registry.lineage import DecisionEntry, Lineage, Switch
from specialize.registry.source import inspect_source
from specialize.registry.store import (
    AdapterRecord,
    AdapterRegistry,
    check_compatible,
    check_name,
    data_home,
    default_registry_dir,
)

__all__ = [
    "AdapterNotFoundError",
    "AdapterRecord",
    "AdapterRegistry",
    "DecisionEntry",
    "IncompatibleAdapterError",
    "Lineage",
    "RegistryError",
    "Switch",
    "check_compatible",
    "check_name",
    "data_home",
    "default_registry_dir",
    "inspect_source",
]
