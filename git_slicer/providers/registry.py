"""Providers by name. Each provider module is imported only when it is asked for: they pull in
what only they need (HTTP for Slicer, QEMU's image builder), and a command uses one."""

from __future__ import annotations

from ..errors import UsageError


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
