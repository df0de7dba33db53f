"""The systems registry: adding a system is adding one module and one line in ``BUILT_IN``.

``register`` is also how a system defined elsewhere (a test, a user's script) joins: its options then become CLI
flags, TOML keys and sweep factors, and ``compare`` runs its variants.
"""

from __future__ import annotations

from sim.errors import ConfigError
from sim.options import Options, specs
from sim.systems.aqpim import AqpimSystem
from sim.systems.base import System
from sim.systems.gpu import GpuSystem
from sim.systems.offload import OffloadSystem
from sim.systems.pim import PimSystem

BUILT_IN = (OffloadSystem, PimSystem, AqpimSystem, GpuSystem)
SYSTEMS: dict[str, type[System]] = {}


def register(cls: type[System]) -> type[System]:
    """Add a system class; an option it shares with another system must be declared the same way."""
    if not (isinstance(cls, type) and issubclass(cls, System) and cls.name):
        raise ConfigError(f"{cls!r} is not a named System subclass")
    if not (isinstance(cls.Options, type) and issubclass(cls.Options, Options)):
        raise ConfigError(f"system '{cls.name}': Options must subclass sim.options.Options")
    mine = specs(cls.Options)
    for other in SYSTEMS.values():
        if other.name == cls.name:
            continue
        theirs = specs(other.Options)
        for key in mine.keys() & theirs.keys():
            if mine[key] != theirs[key]:
                raise ConfigError(f"system '{cls.name}': option '{key}' is declared differently by "
                                  f"system '{other.name}'")
    SYSTEMS[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    SYSTEMS.pop(name, None)


for _cls in BUILT_IN:
    register(_cls)
