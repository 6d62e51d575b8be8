"""The qemu provider: unit tests for the pieces that need no VM, and one end-to-end test that
builds the Debian image, boots a real VM under TCG and pushes, execs, commits and pulls.

The image is expensive (debootstrap + a kernel download, about a minute, ~200 MB): the end-to-end
test builds it into $GIT_SLICER_IMAGE_CACHE when set (reused across runs), else into one
directory shared by the whole pytest session.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import sys
import threading

import pytest

from git_slicer.agent import serial
from git_slicer.agent.server import Agent
from git_slicer.providers import qemu, qemu_image
from git_slicer.session import AgentSession
from git_slicer.transport import ProcessChannel
from git_slicer.wire.framing import Connection
from git_slicer.wire.serialsync import ack_line

QEMU = shutil.which("qemu-system-x86_64")
DEBOOTSTRAP = shutil.which("debootstrap") or (os.path.exists("/usr/sbin/debootstrap") and "/usr/sbin/debootstrap")


# -- units ----------------------------------------------------------------------------
def test_cpio_newc_layout_and_hard_links(tmp_path):
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"hello")
    os.link(root / "d" / "f", root / "d" / "g")
    os.symlink("f", root / "d" / "l")
    buf = io.BytesIO()
    cpio = qemu_image.CpioWriter(buf)
    cpio.add_tree(str(root))
    cpio.finish()
    data = buf.getvalue()
    entries, offset = [], 0
    while True:
        header = data[offset:offset + 110]
        assert header[:6] == b"070701"
        fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        namesize, size = fields[11], fields[6]
        name = data[offset + 110:offset + 110 + namesize - 1].decode()
        offset += (110 + namesize + 3) & ~3
        body = data[offset:offset + size]
        offset += (size + 3) & ~3
        entries.append((name, fields[0], fields[4], body))
        if name == "TRAILER!!!":
            break
    assert offset == len(data)
    by_name = {e[0]: e for e in entries}
    assert [e[0] for e in entries] == ["d", "d/f", "d/g", "d/l", "TRAILER!!!"]
    assert by_name["d/f"][3] == b"hello" and by_name["d/g"][3] == b""      # data once, with the first link
    assert by_name["d/f"][1] == by_name["d/g"][1] and by_name["d/f"][2] == 2
    assert by_name["d/l"][3] == b"f"


def test_agent_layer_carries_init_and_agent_code():
    layer = qemu_image.agent_layer()
    for name in (b"\0init\0", b"opt/git-slicer/git_slicer/agent/serial.py", b"opt/git-slicer/git_slicer/agent/vminit.py",
                 b"opt/git-slicer/git_slicer/wire/framing.py", b"opt/git-slicer/git_slicer/__init__.py", b"dev/console"):
        assert name.strip(b"\0") in layer
    assert qemu_image.agent_layer() == layer                        # deterministic: one initrd per agent version


def test_guest_code_is_stdlib_only():
    for module in ("serial", "vminit"):
        path = os.path.join(os.path.dirname(serial.__file__), module + ".py")
        text = open(path).read()
        for banned in ("import click", "pygit2", "pathspec", "tqdm"):
            assert banned not in text


def test_recipe_hash_changes_with_recipe():
    base = dict(qemu_image.RECIPE, mirror="http://m")
    assert qemu_image.recipe_hash(base) == qemu_image.recipe_hash(dict(base))
    assert qemu_image.recipe_hash(base) != qemu_image.recipe_hash(dict(base, packages=["python3"]))
    assert qemu_image.recipe_hash(base) != qemu_image.recipe_hash(dict(base, mirror="http://other"))


def test_packages_index_and_kernel_choice():
    index = ("Package: linux-image-cloud-amd64\nVersion: 6.1.1\nDepends: linux-image-6.1.0-9-cloud-amd64 (= 6.1.1)\n\n"
             "Package: linux-image-6.1.0-9-cloud-amd64\nVersion: 6.1.1\nFilename: pool/k.deb\nSHA256: ab\n"
             "Description: x\n more\n")
    packages = qemu_image.parse_packages(index)
    assert qemu_image.kernel_package(packages, "linux-image-cloud-amd64")["Filename"] == "pool/k.deb"
    with pytest.raises(Exception, match="no linux-image-x"):
        qemu_image.kernel_package(packages, "linux-image-x")


def test_module_closure_orders_dependencies_first_and_skips_builtins():
    dep = ("kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n"
           "kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko\n"
           "kernel/drivers/virtio/virtio.ko:\n"
           "kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko\n")
    order = qemu_image.module_closure(dep, ["virtio_pci", "virtio_rng", "ext4"], builtin=["kernel/fs/ext4/ext4.ko"])
    assert order == ["kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko",
                     "kernel/drivers/virtio/virtio_pci.ko", "kernel/drivers/char/hw_random/virtio-rng.ko"]
    with pytest.raises(Exception, match="no module nosuch"):
        qemu_image.module_closure(dep, ["nosuch"])


def test_deb_members_reads_ar():
    def member(name, data):
        return (name + "/").ljust(16).encode() + b"0".ljust(12) + b"0".ljust(6) * 2 + b"100644".ljust(8) \
            + str(len(data)).ljust(10).encode() + b"`\n" + data + (b"\n" if len(data) % 2 else b"")
    deb = b"!<arch>\n" + member("debian-binary", b"2.0\n") + member("data.tar.xz", b"abc")
    assert qemu_image.deb_members(deb) == {"debian-binary": b"2.0\n", "data.tar.xz": b"abc"}


def test_qemu_argv_has_no_network_and_a_serial_agent_port(tmp_path, repo):
    from git_slicer.config import Settings
    provider = qemu.QemuProvider(Settings(str(repo.path)))
    image = type("I", (), {"kernel": "/k,ernel", "kernel_version": "6.1"})()
    argv = provider.qemu_argv({"name": "vm-1", "memory_mib": 512, "cpus": 1}, image, "/i", "tcg")
    joined = " ".join(argv)
    assert "-nic none" in joined and "-nodefaults" in joined and "/k,,ernel" in argv
    assert "virtserialport,bus=vser.0,chardev=agent,name=org.git-slicer.agent" in argv
    assert "-cpu host" not in joined
    assert "-cpu host" in " ".join(provider.qemu_argv({"name": "vm-1", "memory_mib": 512, "cpus": 1}, image, "/i", "kvm"))


def test_accel_setting_is_checked(repo):
    repo.git("config", "slicer.qemu.accel", "fast")
    proc = repo.slicer("vm", "list", "--provider", "qemu", check=False)
    assert proc.returncode != 0 and b"slicer.qemu.accel must be auto, kvm, tcg" in proc.stderr
    assert b"Traceback" not in proc.stderr


def test_no_kvm_device_means_tcg(monkeypatch, repo):
    from git_slicer.config import Settings
    monkeypatch.setattr(qemu.os, "access", lambda path, mode: False if path == "/dev/kvm" else True)
    provider = qemu.QemuProvider(Settings(str(repo.path)))
    assert provider.choose_accel(None) == ("tcg", "no usable /dev/kvm")
    assert qemu.probe_kvm("qemu-system-x86_64", "/nonexistent")[0] is False


@pytest.mark.skipif(not QEMU, reason="qemu-system-x86_64 is not installed")
def test_kvm_probe_decides_within_its_timeout(tmp_path):
    """With no kernel to boot the probe must fail fast and say why (never trust /dev/kvm alone)."""
    ok, reason = qemu.probe_kvm(QEMU, str(tmp_path / "no-kernel"), seconds=5)
    assert ok is False and reason


class _Port:
    """A socketpair standing in for the virtio-serial port: guest fd and host socket."""

    def __init__(self):
        self.host, guest = socket.socketpair()
        self.guest_fd = guest.detach()


class _Synced:
    """The host end of the port after the sync handshake, as a channel; the test closes the
    socket itself (it serves session after session)."""

    def __init__(self, conn):
        self.conn = conn

    def handshake_done(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def hang_up(self) -> None:
        pass

    def diagnose(self):
        return None

    def stderr_tail(self, limit: int = 2000) -> str:
        return ""

    def close(self) -> None:
        pass


def _serve(fd):
    try:
        while True:
            nonce, rest = serial.wait_for_sync(fd)
            os.write(fd, ack_line(nonce))
            reader = io.BufferedReader(serial.PortReader(fd, rest))
            writer = io.BufferedWriter(serial.PortWriter(fd))
            Agent(Connection(reader, writer)).serve()
            writer.flush()
    except OSError:
        pass


def test_serial_sync_skips_stale_bytes_and_serves_session_after_session(tmp_path):
    port = _Port()
    threading.Thread(target=_serve, args=(port.guest_fd,), daemon=True).start()
    host = port.host
    # Leftovers of an aborted operation in both directions must not confuse the next one.
    host.sendall(b"J\x00\x00\xff\xffgarbage from an earlier host")
    for round_ in range(3):
        nonce = ("%032x" % (round_ + 7)).encode()
        host.sendall(b"GIT-SLICER-SYNC " + nonce + b"\n")
        rest = qemu.SerialChannel._await_ack(host, nonce, 10)
        assert rest == b""
        host.settimeout(10)
        conn = Connection(qemu._Prefixed(rest, host.makefile("rb")), host.makefile("wb"))
        conn.send({"op": "hello", "protocol": 1})
        assert conn.recv_reply()["agent"] == "git-slicer-agent"
        out, err = io.BytesIO(), io.BytesIO()
        session = AgentSession(_Synced(conn), "t")
        assert session.exec(["sh", "-c", "printf a; printf b >&2"], str(tmp_path), out, err) == 0
        assert (out.getvalue(), err.getvalue()) == (b"a", b"b")
        assert session.exec(["no-such-command-x"], "", out, err) == 127
        conn.send({"op": "bye"})
        conn.recv_reply()


def test_exec_op_through_the_stdio_agent(tmp_path):
    """The exec op is part of protocol v1 for every agent, not just the serial one."""
    channel = ProcessChannel([sys.executable, "-m", "git_slicer.agent", "--stdio"], description="test agent")
    with AgentSession(channel, "t") as session:
        session.hello()
        out, err = io.BytesIO(), io.BytesIO()
        assert session.exec(["sh", "-c", "pwd; exit 3"], str(tmp_path), out, err) == 3
        assert out.getvalue().decode().strip() == str(tmp_path)
        session.conn.send({"op": "exec", "argv": ["true"], "cwd": str(tmp_path / "missing")})
        assert session.conn.recv()["error"]["code"] == "no-dir"
    assert channel.proc.returncode == 0


# -- end to end -------------------------------------------------------------------------
def _e2e_skip_reason():
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        return "the qemu provider's image is x86_64 Linux"
    if not QEMU:
        return "qemu-system-x86_64 is not installed (scripts/install-system-deps.sh installs qemu-system-x86)"
    cache = os.environ.get("GIT_SLICER_IMAGE_CACHE")
    has_image = bool(cache) and any(os.path.exists(os.path.join(cache, d, "image.json"))
                                    for d in (os.listdir(cache) if os.path.isdir(cache) else []))
    if not has_image and not DEBOOTSTRAP:
        return "debootstrap is not installed, and no prebuilt image is in $GIT_SLICER_IMAGE_CACHE"
    if not has_image and os.geteuid() != 0:
        return "building the qemu image needs root (debootstrap); set GIT_SLICER_IMAGE_CACHE to a prebuilt image"
    return None


@pytest.fixture(scope="session")
def image_cache(tmp_path_factory):
    return os.environ.get("GIT_SLICER_IMAGE_CACHE") or str(tmp_path_factory.mktemp("qemu-images"))


@pytest.mark.skipif(_e2e_skip_reason() is not None, reason=str(_e2e_skip_reason()))
def test_end_to_end_push_exec_commit_pull_in_a_real_vm(repo, image_cache, monkeypatch):
    monkeypatch.setenv("GIT_SLICER_IMAGE_CACHE", image_cache)
    monkeypatch.setenv("GIT_SLICER_QEMU_ACCEL", "tcg")
    repo.git("config", "slicer.qemu.memory", "768m")
    build = repo.slicer("vm", "image", "build")
    assert b"image" in build.stdout
    repo.write("README.md", "# project\nchanged on the host, not committed\n")
    repo.write("notes/todo.txt", "untracked\n")
    repo.git("add", "src/lib.py")
    host_status = repo.status()

    result = repo.slicer_json("push", "--launch", "--provider", "qemu")
    vm = result["vm"]
    try:
        assert result["provider"] == "qemu"
        listing = repo.slicer("vm", "list", "--provider", "qemu").stdout.decode()
        assert vm in listing and "running" in listing and "TCG" in listing
        assert repo.vm_status(vm) == host_status
        guest_kernel = repo.slicer("exec", vm, "--", "uname", "-r").stdout.decode().strip()
        assert guest_kernel.endswith("-cloud-amd64") and guest_kernel != os.uname().release
        assert repo.slicer("exec", vm, "--", "sh", "-c", "exit 7", check=False).returncode == 7

        repo.vm_sh(vm, "git add -A && git commit -qm 'made in the VM'")
        pulled = repo.slicer_json("pull", vm)
        assert pulled
        assert repo.git("log", "-1", "--format=%s").strip() == "made in the VM"
        assert repo.status() == ""

        # The repository is on the VM's own disk: it survives a stop and a start.
        repo.slicer("vm", "stop", vm)
        assert "stopped" in repo.slicer("vm", "list", "--provider", "qemu").stdout.decode()
        failed = repo.slicer("status", vm, check=False)
        assert failed.returncode != 0 and b"is stopped" in failed.stderr and b"Traceback" not in failed.stderr
        repo.slicer("vm", "start", vm)
        assert repo.vm_git(vm, "log", "-1", "--format=%s").strip() == "made in the VM"
        with open(os.path.join(os.environ["XDG_DATA_HOME"], "git-slicer", "vms", ".qemu", vm, "qemu.pid")) as fh:
            pid = int(fh.read())
    finally:
        repo.slicer("vm", "rm", vm, "--provider", "qemu", check=False)
    assert vm not in repo.slicer("vm", "list", "--provider", "qemu").stdout.decode()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
