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


class DirectoryVMs:
    """VMs recorded as `<root>/<name>/vm.json`, for providers that keep their VMs on this host.
    Subclasses set `root`, `name` and implement `_vm(record) -> VM`."""

    root = ""
    name = ""

    def _dir(self, vm_name: str) -> str:
        import os
        from ..links import check_vm_name
        return os.path.join(self.root, check_vm_name(vm_name))

    def _record(self, vm_name: str):
        import json
        import os
        try:
            with open(os.path.join(self._dir(vm_name), "vm.json"), "rb") as fh:
                return json.load(fh)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def get(self, vm_name: str) -> VM:
        record = self._record(vm_name)
        if record is None:
            from ..errors import VMNotFound
            raise VMNotFound("no %s VM named %s" % (self.name, vm_name),
                             hint="see `git slicer vm list --provider %s`" % self.name)
        return self._vm(record)

    def list(self):
        import os
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        records = [self._record(n) for n in names if not n.startswith(".")]
        return [self._vm(r) for r in records if r]


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
