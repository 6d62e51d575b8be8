"""Where VMs come from. A provider launches, lists and removes VMs, opens a channel to the
agent in one, and runs commands there. `local` (a bubblewrap sandbox) is the embedded default.

This package module holds what every provider shares (`VM`, `DirectoryVMs`);
`providers/registry.py` picks a provider by name.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import Protocol

from ..config import vm_dir
from ..errors import UsageError, VMNotFound
from ..links import check_vm_name
from ..links import new_vm_id  # noqa: F401  (providers make ids at launch)


@dataclass
class VM:
    name: str
    provider: str
    address: str = ""
    created_at: str = ""
    state: str = "running"
    details: dict = field(default_factory=dict)
    id: str = ""                # made at launch, kept in the provider's record ("" if it keeps none)

    def as_json(self) -> dict:
        return {"name": self.name, "provider": self.provider, "address": self.address,
                "created_at": self.created_at, "state": self.state, "id": self.id, **self.details}


def record_roots(vm_root: str) -> dict:
    """Where each VM-record provider keeps `<name>/vm.json`: one namespace of names across them."""
    return {"local": vm_root, "qemu": os.path.join(vm_root, ".qemu")}


class Provider(Protocol):
    """What every provider (local, qemu, slicer, ssh, address) implements, all of it. Each
    provider class states its two capabilities itself (tests/test_seams.py checks), so no
    caller probes for them."""

    name: str
    passes_env: bool        # exec takes env= (variables handed to that one command: `exec --env`)
    supports_egress: bool   # launch takes allow=, set_egress and egress_log work; else they refuse

    def get(self, name: str) -> VM:
        """The VM called `name` (VMNotFound if there is none)."""

    def list(self) -> list:
        """Every VM of this provider."""

    def launch(self, name: str = None, tags=None, avoid=()) -> VM:
        """A new VM (named `name`, or a free name not in `avoid`), or a UsageError saying why not."""

    def remove(self, name: str) -> None:
        """Stop and delete the VM and its disk (or a UsageError saying why not)."""

    def stop(self, name: str) -> VM:
        """Stop the VM, keeping its disk (or a UsageError: the provider cannot)."""

    def start(self, name: str) -> VM:
        """Start a stopped VM again (or a UsageError: the provider cannot)."""

    def connect(self, vm: VM):
        """A transport.Channel to the agent in `vm`, ready for `hello`."""

    def exec(self, vm: VM, argv, cwd: str = "", interactive: bool = False) -> int:
        """Run `argv` in the VM at `cwd`, stdio passed through; its exit code."""

    def shell(self, vm: VM, cwd: str = "") -> int:
        """An interactive shell in the VM, in `cwd` (the linked repository's guest path, "" for
        the home), on this terminal; its exit code."""

    def set_egress(self, name: str, rules) -> VM:
        """Replace the VM's egress allowlist (canonical rule texts), or `no_egress`'s refusal."""

    def egress_log(self, name: str):
        """The VM's connection log (egress.log.EgressLog), or `no_egress`'s refusal."""


def no_egress(provider) -> UsageError:
    """The one-line refusal of a provider that enforces no egress allowlist."""
    why = "; its VMs have no network (see docs/qemu.md)" if provider.name == "qemu" else ""
    return UsageError("provider %s cannot enforce an egress allowlist (--allow)%s" % (provider.name, why))


class NoEgress:
    """set_egress and egress_log for providers without an allowlist: each refuses in one line
    (a VM that silently had no way out, or every way out, would be worse)."""

    def set_egress(self, name: str, rules) -> VM:
        raise no_egress(self)

    def egress_log(self, name: str):
        raise no_egress(self)


# An interactive shell in the VM: bash where the guest has it, else sh.
SHELL_COMMAND = ["sh", "-c", "command -v bash >/dev/null 2>&1 && exec bash -i || exec sh -i"]


class ShellByExec:
    """`shell` for providers without a terminal endpoint of their own: SHELL_COMMAND through
    `exec`. Both provider bases below carry it; Slicer has its own."""

    def shell(self, vm: VM, cwd: str = "") -> int:
        # exec takes absolute directories: a guest path not yet resolved ("~/...") opens the home
        return self.exec(vm, SHELL_COMMAND, cwd if cwd.startswith("/") else "", interactive=sys.stdin.isatty())


class AlwaysRunning(ShellByExec):
    """stop/start for providers whose VMs git-slicer does not stop and start."""

    name = ""

    def stop(self, name: str) -> VM:
        raise UsageError("provider %s cannot stop VMs" % self.name)

    def start(self, name: str) -> VM:
        raise UsageError("provider %s cannot start VMs" % self.name)


class DirectoryVMs(ShellByExec):
    """VMs recorded as `<root>/<name>/vm.json`, for providers that keep their VMs on this host.
    Subclasses set `root`, `name` and implement `_vm(record) -> VM`."""

    root = ""
    name = ""

    def claim(self, name: str = None, avoid=()) -> str:
        """Atomically take `name` (or the first free vm-N not in `avoid`) for a new VM: mkdir of
        `<root>/<name>`, then no other record provider may hold the name. Each claimant makes its
        own directory before looking at the others', so two racing claims never both win."""
        os.makedirs(self.root, exist_ok=True)
        others = [root for provider, root in record_roots(self._vm_root()).items() if provider != self.name]
        number = 0
        while True:
            if name:
                candidate = check_vm_name(name)
            else:
                number += 1
                candidate = "vm-%d" % number
                if candidate in avoid:
                    continue
            try:
                os.mkdir(self._dir(candidate))
            except FileExistsError:
                if name:
                    raise UsageError("a VM named %s already exists (%s)" % (name, self.name)) from None
                continue
            holder = next((r for r in others if os.path.isdir(os.path.join(r, candidate))), None)
            if holder is None:
                return candidate
            os.rmdir(self._dir(candidate))
            if name:
                raise UsageError("a VM named %s already exists (%s); VM names are shared by the local "
                                 "and qemu providers" % (name, "qemu" if holder.endswith(".qemu") else "local"))

    def discard(self, name: str) -> None:
        """Delete the VM's record and disk (VMNotFound if there is none). Renamed aside first, so
        a half-removed VM never looks like a live one. Whatever runs for the VM is stopped first,
        by the caller."""
        self.get(name)
        doomed = os.path.join(self.root, ".removing-%s-%d" % (name, os.getpid()))
        os.rename(self._dir(name), doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def _vm_root(self) -> str:
        return vm_dir(self.settings)

    def _dir(self, vm_name: str) -> str:
        return os.path.join(self.root, check_vm_name(vm_name))

    def _record(self, vm_name: str):
        try:
            with open(os.path.join(self._dir(vm_name), "vm.json"), "rb") as fh:
                return json.load(fh)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def get(self, vm_name: str) -> VM:
        record = self._record(vm_name)
        if record is None:
            raise VMNotFound("no %s VM named %s" % (self.name, vm_name),
                             hint="see `git slicer vm list --provider %s`" % self.name)
        return self._vm(record)

    def list(self):
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        records = [self._record(n) for n in names if not n.startswith(".")]
        return [self._vm(r) for r in records if r]
