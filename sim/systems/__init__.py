"""The systems registry: adding a system is adding one module and one entry here."""

from sim.systems.aqpim import AqpimSystem
from sim.systems.gpu import GpuSystem
from sim.systems.offload import OffloadSystem
from sim.systems.pim import PimSystem

SYSTEMS = {cls.name: cls for cls in (OffloadSystem, PimSystem, AqpimSystem, GpuSystem)}
