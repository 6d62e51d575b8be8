"""The qemu provider: each VM is a real QEMU virtual machine booted from a Debian image.

    <vmDir>/.qemu/<name>/vm.json      host-side record (name, created, cpus, memory, accel, image)
    <vmDir>/.qemu/<name>/disk.img     the VM's own disk (sparse raw, ext4 made by the guest on first
                                      boot), mounted as the agent's home: the repository lives there
                                      and survives `vm stop` / `vm start`
    <vmDir>/.qemu/<name>/qemu.pid     the running QEMU (it daemonizes)
    <vmDir>/.qemu/<name>/qmp.sock     QMP, used to stop it
    <vmDir>/.qemu/<name>/agent.sock   QEMU chardev socket = the guest's virtio-serial port on which
                                      the agent serves (git_slicer/agent/serial.py)
    <vmDir>/.qemu/<name>/console.log  the guest's serial console

The guest has no network device. The host reaches the agent only through agent.sock; every
operation opens with a sync/ack handshake carrying a fresh nonce (see agent/serial.py and
docs/protocol.md), then speaks protocol v1. Commands run through the agent's `exec` op.
Acceleration: KVM only when a test guest really boots under it (probed once per host boot,
cached), else TCG. See docs/qemu.md.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time

from .. import report
from ..config import vm_dir
from ..errors import AgentFailed, SlicerError, UsageError, VMNotFound
from ..wire.files import utc_now, write_atomic
from ..wire.framing import Connection, ProtocolError
from ..wire.serialsync import ack_pattern, new_nonce, sync_line
from ..session import open_session
from ..transport import SocketChannel
from . import VM, DirectoryVMs, NoEgress, new_vm_id
from .qemu_image import build_image, find_image, image_root

PORT_NAME = "org.git-slicer.agent"
SYNC_ATTEMPT_SECONDS = 3
KVM_PROBE_SECONDS = 20
_MB = 1024 * 1024


def _say(message: str) -> None:
    if not report.quiet:
        sys.stderr.write("git-slicer: %s\n" % message)
        sys.stderr.flush()


# -- the channel to the agent ------------------------------------------------------
class _Prefixed:
    """A reader that first returns bytes already read past the handshake."""

    def __init__(self, prefix: bytes, raw):
        self.prefix = prefix
        self.raw = raw

    def readinto(self, buf) -> int:
        if self.prefix:
            n = min(len(buf), len(self.prefix))
            buf[:n] = self.prefix[:n]
            self.prefix = self.prefix[n:]
            return n
        return self.raw.readinto(buf)


class SerialChannel(SocketChannel):
    """The agent behind a QEMU chardev unix socket wired to a virtio-serial port in the guest.
    Its own connect and sync handshake; once connected it is a socket channel like any other."""

    def __init__(self, path: str, description: str, timeout: float, alive=None,
                 handshake_timeout: float = 30):
        self.description = description
        self.shipped = False
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AgentFailed("timed out after %gs waiting for the agent of %s (%s)" % (timeout, description, last))
            reason = alive() if alive else None
            if reason:
                raise AgentFailed(reason)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(min(remaining, SYNC_ATTEMPT_SECONDS))
            try:
                sock.connect(path)
                nonce = new_nonce()
                sock.sendall(sync_line(nonce))
                rest = self._await_ack(sock, nonce, min(remaining, SYNC_ATTEMPT_SECONDS))
            except (OSError, socket.timeout) as exc:
                last = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
                rest = None
            if rest is not None:
                break
            sock.close()
            time.sleep(0.2)
        sock.settimeout(handshake_timeout)
        self.sock = sock
        self.conn = Connection(_Prefixed(rest, sock.makefile("rb")),
                               sock.makefile("wb", buffering=1024 * 1024))

    @staticmethod
    def _await_ack(sock, nonce: bytes, seconds: float):
        """Bytes after our ack (normally none), or None if it did not come in time.
        Anything before it is what an earlier, aborted operation left in flight."""
        want = ack_pattern(nonce)
        deadline = time.monotonic() + seconds
        buf = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except socket.timeout:
                return None
            if not data:
                return None
            buf += data
            match = want.search(buf)
            if match:
                return buf[match.end():]
            buf = buf[-(len(nonce) + 32):]


# -- QMP -----------------------------------------------------------------------------
def qmp(path: str, command: str, timeout: float = 5) -> dict:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        reader = sock.makefile("rb")
        json.loads(reader.readline())                     # greeting
        for message in ({"execute": "qmp_capabilities"}, {"execute": command}):
            sock.sendall(json.dumps(message).encode() + b"\n")
            while True:
                reply = json.loads(reader.readline() or b"{}")
                if "event" not in reply:
                    break
        return reply
    finally:
        sock.close()


# -- acceleration ----------------------------------------------------------------------
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def probe_kvm(binary: str, kernel: str, seconds: float = KVM_PROBE_SECONDS):
    """(works, reason): boot the guest kernel under KVM with no root fs and wait for its panic.

    /dev/kvm existing is not enough: with incomplete nested virtualization a Linux guest can hang
    early in boot (e.g. right after "Probing EDD"). Reaching the "unable to mount root" panic
    proves the whole kernel boot works."""
    if not os.path.exists("/dev/kvm"):
        return False, "no /dev/kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not accessible to this user"
    argv = [binary, "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults", "-no-user-config",
            "-display", "none", "-serial", "stdio", "-no-reboot", "-kernel", kernel,
            "-append", "console=ttyS0 panic=-1 loglevel=4"]
    started = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    except OSError as exc:
        return False, "cannot run %s: %s" % (binary, exc.strerror)
    out = b""
    try:
        while time.monotonic() - started < seconds:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
                if b"Kernel panic" in out or b"Unable to mount root" in out:
                    return True, "a test guest booted under KVM in %.1fs" % (time.monotonic() - started)
            elif proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
    if proc.returncode not in (None, 0, -9) and b"kvm" in out.lower():
        line = out.decode("utf-8", "replace").strip().splitlines()[-1:]
        return False, "QEMU could not use KVM: %s" % (line[0] if line else "exit %d" % proc.returncode)
    return False, "a test guest did not boot under KVM within %ds" % seconds


# -- the provider ----------------------------------------------------------------------
class QemuProvider(DirectoryVMs, NoEgress):
    name = "qemu"
    passes_env = True           # exec(env=...): the agent's exec op adds them for that one command
    supports_egress = False     # its VMs have no network at all

    def __init__(self, settings):
        self.settings = settings
        self.root = os.path.join(vm_dir(settings), ".qemu")
        self.binary = settings.get("slicer.qemu.binary")
        self.accel = settings.get("slicer.qemu.accel")
        if self.accel not in ("auto", "kvm", "tcg"):
            raise UsageError("slicer.qemu.accel must be auto, kvm or tcg (got %r)" % self.accel)

    # -- records ---------------------------------------------------------------
    def _file(self, name: str, leaf: str) -> str:
        return os.path.join(self._dir(name), leaf)

    def _save(self, record) -> None:
        write_atomic(self._file(record["name"], "vm.json"), json.dumps(record, indent=1).encode())

    def _pid(self, name: str):
        """The pid of this VM's running QEMU, or None."""
        try:
            with open(self._file(name, "qemu.pid")) as fh:
                pid = int(fh.read().strip() or 0)
            with open("/proc/%d/cmdline" % pid, "rb") as fh:
                cmdline = fh.read()
        except (OSError, ValueError):
            return None
        return pid if b"git-slicer-" + name.encode() + b"\0" in cmdline else None

    def _vm(self, record) -> VM:
        running = self._pid(record["name"]) is not None
        details = {k: record.get(k) for k in ("accel", "accel_reason", "cpus", "memory_mib", "disk_bytes",
                                               "kernel", "image", "boot_seconds", "tags") if k in record}
        return VM(name=record["name"], provider=self.name, address="qemu:" + record["name"],
                  created_at=record.get("created_at", ""), state="running" if running else "stopped",
                  id=record.get("id", ""),
                  details=details)

    # -- lifecycle ---------------------------------------------------------------
    def _check_binary(self) -> None:
        if shutil.which(self.binary) is None:
            raise UsageError("the qemu provider needs %s" % self.binary, hint="apt-get install qemu-system-x86")

    def image(self, build: bool = True):
        image = find_image(self.settings)
        if image is None and build:
            _say("no guest image yet in %s: building it (once; a few minutes)" % image_root(self.settings))
            image = build_image(self.settings, say=_say)
        return image

    def launch(self, name: str = None, tags=None, avoid=()) -> VM:
        self._check_binary()
        image = self.image()
        name = self.claim(name, avoid)
        try:
            memory = self.settings.get("slicer.qemu.memory") // _MB
            record = {"name": name, "id": new_vm_id(), "provider": self.name, "created_at": utc_now(),
                      "tags": dict(tags or {}),
                      "cpus": self.settings.get("slicer.qemu.cpus"), "memory_mib": memory,
                      "disk_bytes": self.settings.get("slicer.qemu.diskSize")}
            with open(self._file(name, "disk.img"), "wb") as fh:
                fh.truncate(record["disk_bytes"])
            self._save(record)
            self._boot(record, image)
        except BaseException:
            self._kill(name)
            shutil.rmtree(self._dir(name), ignore_errors=True)
            raise
        return self._vm(record)

    def start(self, name: str) -> VM:
        record = self._record(name)
        if record is None:
            raise VMNotFound("no qemu VM named %s" % name)
        if self._pid(name) is not None:
            raise UsageError("VM %s is already running" % name)
        self._check_binary()
        self._boot(record, self.image())
        return self._vm(record)

    def stop(self, name: str) -> VM:
        record = self._record(name)
        if record is None:
            raise VMNotFound("no qemu VM named %s" % name)
        if self._pid(name) is not None:
            try:        # flush the guest's page cache to its disk first
                self._run(self.get(name), ["sync"], "", sys.stdout.buffer, sys.stderr.buffer, timeout=20)
            except SlicerError:
                pass
            self._kill(name, graceful=True)
        return self._vm(record)

    def remove(self, name: str) -> None:
        self.get(name)
        self._kill(name)
        self.discard(name)

    def _kill(self, name: str, graceful: bool = False) -> None:
        pid = self._pid(name)
        if pid is None:
            return
        if graceful:
            try:
                qmp(self._file(name, "qmp.sock"), "quit")
            except (OSError, ValueError):
                pass
            if self._wait_gone(pid, 10):
                return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self._wait_gone(pid, 10)

    @staticmethod
    def _wait_gone(pid: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.05)
        return False

    # -- booting -------------------------------------------------------------------
    def choose_accel(self, image):
        """("kvm" | "tcg", why)."""
        if self.accel == "tcg":
            return "tcg", "slicer.qemu.accel=tcg"
        if self.accel == "kvm":
            if not os.access("/dev/kvm", os.R_OK | os.W_OK):
                raise UsageError("slicer.qemu.accel=kvm but /dev/kvm is missing or not accessible")
            return "kvm", "slicer.qemu.accel=kvm"
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            return "tcg", "no usable /dev/kvm"
        binary = shutil.which(self.binary) or self.binary
        try:
            stamp = os.stat(binary).st_mtime
        except OSError:
            stamp = 0
        key = "%s %s %s %s" % (_boot_id(), binary, stamp, image.kernel_version)
        cache = os.path.join(image_root(self.settings), "kvm-probe.json")
        try:
            with open(cache) as fh:
                cached = json.load(fh)
            if cached.get("key") == key:
                return ("kvm" if cached["ok"] else "tcg"), cached["reason"] + " (cached)"
        except (OSError, ValueError, KeyError):
            pass
        _say("checking whether KVM really works here (a test boot, up to %ds, once per host boot)" % KVM_PROBE_SECONDS)
        ok, reason = probe_kvm(binary, image.kernel)
        try:
            write_atomic(cache, json.dumps({"key": key, "ok": ok, "reason": reason}).encode())
        except OSError:
            pass
        return ("kvm" if ok else "tcg"), reason

    def qemu_argv(self, record, image, initrd: str, accel: str) -> list:
        def esc(path):
            return path.replace(",", ",,")
        argv = [self.binary, "-name", "git-slicer-" + record["name"], "-machine", "q35",
                "-accel", accel, "-m", "%dM" % record["memory_mib"], "-smp", str(record["cpus"]),
                "-nodefaults", "-no-user-config", "-display", "none", "-nic", "none", "-no-reboot",
                "-kernel", image.kernel, "-initrd", initrd,
                "-append", "console=ttyS0 quiet panic=-1 slicer.name=%s" % record["name"],
                "-serial", "file:console.log",
                "-drive", "file=disk.img,format=raw,if=virtio,cache=writeback,discard=unmap",
                "-device", "virtio-serial-pci,id=vser",
                "-chardev", "socket,id=agent,path=agent.sock,server=on,wait=off",
                "-device", "virtserialport,bus=vser.0,chardev=agent,name=" + PORT_NAME,
                "-device", "virtio-rng-pci",
                "-qmp", "unix:qmp.sock,server=on,wait=off",
                "-pidfile", "qemu.pid", "-daemonize"]
        if accel == "kvm":
            argv[argv.index("-m"):argv.index("-m")] = ["-cpu", "host"]
        argv[argv.index("-kernel") + 1] = esc(image.kernel)
        argv[argv.index("-initrd") + 1] = esc(initrd)
        return argv

    def _boot(self, record, image) -> None:
        name = record["name"]
        directory = self._dir(name)
        for leaf in ("qemu.pid", "agent.sock", "qmp.sock", "console.log"):
            try:
                os.unlink(os.path.join(directory, leaf))
            except FileNotFoundError:
                pass
        if len(os.path.join(directory, "agent.sock")) > 100:
            raise UsageError("the VM directory %s is too deep for unix sockets" % directory,
                             hint="set slicer.vmDir to a shorter path")
        accel, why = self.choose_accel(image)
        initrd = image.initrd()
        record.update({"accel": accel, "accel_reason": why, "kernel": image.kernel_version, "image": image.id})
        _say("booting VM %s: QEMU with %s (%s), %d CPUs, %d MiB, kernel %s"
             % (name, accel.upper(), why, record["cpus"], record["memory_mib"], image.kernel_version))
        started = time.monotonic()
        proc = subprocess.run(self.qemu_argv(record, image, initrd, accel), cwd=directory,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            raise SlicerError("QEMU did not start VM %s: %s" % (name, lines[-1] if lines else "exit %d" % proc.returncode))
        timeout = self.settings.get("slicer.qemu.bootTimeout")
        try:
            channel = SerialChannel(os.path.join(directory, "agent.sock"), "VM %s" % name, timeout,
                                    alive=lambda: self._dead_reason(name))
        except AgentFailed as exc:
            if self._pid(name) is not None:
                raise AgentFailed(str(exc) + self._console_tail(name)) from None
            raise
        try:
            channel.conn.send({"op": "bye"})
            channel.conn.recv_reply()
        except (ProtocolError, OSError) as exc:
            raise AgentFailed("VM %s booted but its agent failed: %s" % (name, exc)) from None
        finally:
            channel.close()
        record["boot_seconds"] = round(time.monotonic() - started, 1)
        record["booted_at"] = utc_now()
        self._save(record)
        _say("VM %s is up: agent answered %.1fs after QEMU started (%s)" % (name, record["boot_seconds"], accel.upper()))

    def _dead_reason(self, name: str):
        if self._pid(name) is not None:
            return None
        return "VM %s stopped while booting%s" % (name, self._console_tail(name))

    def _console_tail(self, name: str) -> str:
        try:
            with open(self._file(name, "console.log"), "rb") as fh:
                lines = [l.strip() for l in fh.read().decode("utf-8", "replace").splitlines() if l.strip()]
        except OSError:
            return ""
        return (" (console: %s)" % lines[-1][:300]) if lines else ""

    # -- reaching the agent ----------------------------------------------------------
    def connect(self, vm: VM) -> SerialChannel:
        name = vm.name
        if self._record(name) is None:
            raise VMNotFound("no qemu VM named %s" % name)
        if self._pid(name) is None:
            raise AgentFailed("VM %s is stopped" % name, hint="git slicer vm start %s" % name)
        timeout = self.settings.get("slicer.connectTimeout") + self.settings.get("slicer.handshakeTimeout")
        return SerialChannel(self._file(name, "agent.sock"), "VM %s" % name, timeout,
                             alive=lambda: None if self._pid(name) else "VM %s stopped" % name,
                             handshake_timeout=self.settings.get("slicer.handshakeTimeout"))

    def exec(self, vm: VM, argv, cwd: str = "", interactive: bool = False, env=None) -> int:
        """Run argv in the guest through the agent's exec op (no stdin, no terminal)."""
        return self._run(vm, argv, cwd, sys.stdout.buffer, sys.stderr.buffer, env=env)

    def _run(self, vm: VM, argv, cwd, out, err, timeout: float = None, env=None) -> int:
        with open_session(self, vm, self.settings, deadline=int(timeout) if timeout else None) as session:
            return session.exec(argv, cwd, out, err, env=env)
