"""VMs registered by address (`git config slicer.<vm>.address ADDR`), and the ssh provider.

Nothing is launched or removed here: the VM exists elsewhere, and git config says how to reach
its agent. `connect` opens the address's transport; `exec` runs commands through ssh: and exec:
addresses (socket-only addresses cannot run commands).
"""

from __future__ import annotations

import os
import shlex
import subprocess

from .. import transport
from ..errors import UsageError, VMNotFound
from ..links import check_vm_name
from . import VM, AlwaysRunning, NoEgress


def transport_options(settings, vm_name: str) -> dict:
    try:
        ssh_command = shlex.split(settings.get("slicer.sshCommand") or "ssh")
    except ValueError as exc:
        raise UsageError("bad slicer.sshCommand: %s" % exc) from None
    return {"ssh_command": (ssh_command or ["ssh"]) + transport.ssh_reuse_options(settings.get("slicer.sshPersist")),
            "connect_timeout": settings.get("slicer.connectTimeout"),
            "handshake_timeout": settings.get("slicer.handshakeTimeout")}


def vm_token(settings, vm_name: str):
    token = settings.vm(vm_name, "token")
    path = settings.vm(vm_name, "tokenFile")
    if not token and path:
        try:
            with open(os.path.expanduser(path), encoding="utf-8") as fh:
                token = fh.read().strip()
        except OSError as exc:
            raise UsageError("cannot read slicer.%s.tokenFile %s: %s" % (vm_name, path, exc.strerror)) from None
    return token or None


class AddressProvider(AlwaysRunning, NoEgress):
    name = "address"
    passes_env = False          # exec hands no variables to the command
    supports_egress = False

    def __init__(self, settings):
        self.settings = settings

    def _address(self, name: str) -> str:
        return self.settings.vm(name, "address") or ""

    def get(self, name: str) -> VM:
        check_vm_name(name)
        address = self._address(name)
        if not address:
            raise VMNotFound("no address configured for VM %s" % name,
                             hint="git config slicer.%s.address ADDR (see docs/transports.md)" % name)
        transport.parse_address(address)
        return VM(name=name, provider=self.name, address=address, state="configured")

    def list(self):
        return [VM(name=name, provider=self.name, address=address, state="configured")
                for name, address in sorted(self.settings.vms_with_address().items())
                if (self.settings.vm(name, "provider") or self.name) == self.name]

    def launch(self, name: str = None, tags=None, avoid=()) -> VM:
        raise UsageError("the %s provider cannot launch VMs" % self.name,
                         hint="register one with `git config slicer.NAME.address ADDR`, "
                              "or launch with --provider local|slicer")

    def remove(self, name: str) -> None:
        self.get(name)
        raise UsageError("VM %s is only registered by address; git-slicer did not create it and will not "
                         "delete it" % name, hint="forget it with `git config --remove-section slicer.%s`" % name)

    def connect(self, vm: VM):
        address = transport.parse_address(vm.address)
        return transport.open_channel(address, description="the agent of VM %s" % vm.name,
                                      token=vm_token(self.settings, vm.name),
                                      **transport_options(self.settings, vm.name))

    def exec(self, vm: VM, argv, cwd: str = "", interactive: bool = False) -> int:
        address = transport.parse_address(vm.address)
        options = transport_options(self.settings, vm.name)
        full = transport.guest_command(address, argv, cwd, ssh_command=options["ssh_command"],
                                       interactive=interactive, connect_timeout=options["connect_timeout"])
        try:
            return subprocess.call(full)
        except FileNotFoundError:
            raise UsageError("command not found: %s" % full[0]) from None


class SSHProvider(AddressProvider):
    """Any ssh host is a VM: its name is an ssh destination (from ~/.ssh/config or DNS) unless
    slicer.<vm>.address says otherwise. Nothing to launch; everything else works."""

    name = "ssh"
    passes_env = False
    supports_egress = False

    def _address(self, name: str) -> str:
        return self.settings.vm(name, "address") or "ssh:" + name

    def get(self, name: str) -> VM:
        vm = super().get(name)
        if not vm.address.startswith("ssh:"):
            raise UsageError("VM %s has address %s; the ssh provider needs an ssh: address" % (name, vm.address))
        return vm

    def list(self):
        return [VM(name=name, provider=self.name, address=address, state="configured")
                for name, address in sorted(self.settings.vms_with_address().items())
                if address.startswith("ssh:") and (self.settings.vm(name, "provider") or self.name) == self.name]

    def launch(self, name: str = None, tags=None, avoid=()) -> VM:
        raise UsageError("the ssh provider cannot launch VMs (push --launch is not offered for ssh hosts)",
                         hint="push to a host by name: `git slicer push HOST`, with slicer.provider=ssh")
