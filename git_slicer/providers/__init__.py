"""Where VMs come from. A provider launches, lists and removes VMs, opens a channel to the
agent in one, and runs commands there. `local` (a bubblewrap sandbox) is the embedded default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UsageError


@dataclass
class VM:
    name: str
    provider: str
    address: str = ""
    created_at: str = ""
    state: str = "running"
    details: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        return {"name": self.name, "provider": self.provider, "address": self.address,
                "created_at": self.created_at, "state": self.state, **self.details}


def get_provider(name: str, settings):
    if name == "local":
        from .local import LocalProvider
        return LocalProvider(settings)
    if name == "qemu":
        from .qemu import QemuProvider
        return QemuProvider(settings)
    if name == "address":
        from .address import AddressProvider
        return AddressProvider(settings)
    if name == "ssh":
        from .address import SSHProvider
        return SSHProvider(settings)
    if name == "slicer":
        from .slicer import SlicerProvider
        return SlicerProvider(settings)
    raise UsageError("unknown provider %r (known: local, qemu, slicer, ssh, address)" % name)
