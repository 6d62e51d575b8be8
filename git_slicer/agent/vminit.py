"""PID 1 of a git-slicer QEMU guest (the image's /init runs this). Stdlib only.

The root filesystem is the image's initramfs (a tmpfs: nothing there survives a restart). This
init mounts the kernel filesystems, loads the few kernel modules the guest needs (the list the
image build wrote), formats the VM's disk on first boot and mounts it as the agent's home (the
repository lives there, so the work survives `vm stop`/`vm start`), then runs the agent on the
virtio-serial port as uid 1000 and restarts it if it dies. There is no network.
"""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
import time
import traceback

PORT_NAME = "org.git-slicer.agent"
HOME = "/home/agent"
DISK = "/dev/vda"
UID = GID = 1000
MODULES_LIST = "/lib/git-slicer/modules.list"
LIB = "/opt/git-slicer"
SYS_FINIT_MODULE = 313          # x86_64
EXT4_MAGIC_OFFSET = 1080


def log(message: str) -> None:
    sys.stderr.write("git-slicer init: %s\n" % message)
    sys.stderr.flush()


def sh(*argv) -> int:
    try:
        return subprocess.call(list(argv))
    except OSError as exc:
        log("cannot run %s: %s" % (argv[0], exc))
        return 127


def mount_basics() -> None:
    for source, target, fstype in (("proc", "/proc", "proc"), ("sysfs", "/sys", "sysfs"),
                                   ("devtmpfs", "/dev", "devtmpfs"), ("tmpfs", "/run", "tmpfs")):
        os.makedirs(target, exist_ok=True)
        sh("mount", "-t", fstype, source, target)
    os.makedirs("/dev/pts", exist_ok=True)
    sh("mount", "-t", "devpts", "devpts", "/dev/pts")
    os.chmod("/tmp", 0o1777)


def load_modules() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        with open(MODULES_LIST) as fh:
            paths = [line.strip() for line in fh if line.strip()]
    except FileNotFoundError:
        return
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            if libc.syscall(SYS_FINIT_MODULE, fd, b"", 0) != 0:
                err = ctypes.get_errno()
                if err != errno.EEXIST:
                    log("cannot load %s: %s" % (os.path.basename(path), os.strerror(err)))
        finally:
            os.close(fd)


def wait_for(predicate, seconds: float):
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def mount_home() -> None:
    os.makedirs(HOME, exist_ok=True)
    if not wait_for(lambda: os.path.exists(DISK), 20):
        log("no disk at %s: the home directory is in memory only" % DISK)
        os.chown(HOME, UID, GID)
        return
    with open(DISK, "rb") as fh:
        fh.seek(EXT4_MAGIC_OFFSET)
        fresh = fh.read(2) != b"\x53\xef"
    if fresh:
        log("formatting %s" % DISK)
        sh("mkfs.ext4", "-q", "-F", "-L", "slicer-home", "-m", "0", DISK)
    if sh("mount", "-t", "ext4", "-o", "noatime", DISK, HOME) != 0:
        log("cannot mount %s" % DISK)
    if fresh or os.stat(HOME).st_uid != UID:
        os.chown(HOME, UID, GID)
        os.chmod(HOME, 0o755)


def find_port():
    base = "/sys/class/virtio-ports"
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return None
    for name in names:
        try:
            with open(os.path.join(base, name, "name")) as fh:
                if fh.read().strip() == PORT_NAME:
                    return "/dev/" + name
        except OSError:
            continue
    return None


def cmdline_value(key: str, default: str = "") -> str:
    try:
        with open("/proc/cmdline") as fh:
            words = fh.read().split()
    except OSError:
        return default
    for word in words:
        if word.startswith(key + "="):
            return word[len(key) + 1:]
    return default


def start_agent(port: str):
    env = {"HOME": HOME, "USER": "agent", "LOGNAME": "agent", "LANG": "C.UTF-8",
           "PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": LIB, "PYTHONDONTWRITEBYTECODE": "1"}

    def drop():
        os.setgroups([])
        os.setgid(GID)
        os.setuid(UID)
    return subprocess.Popen([sys.executable, "-m", "git_slicer.agent.serial", port],
                            env=env, cwd=HOME, preexec_fn=drop)


def main() -> None:
    started = time.monotonic()
    os.environ.update({"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})   # the kernel sets none
    mount_basics()
    load_modules()
    name = cmdline_value("slicer.name", "vm")
    try:
        with open("/proc/sys/kernel/hostname", "w") as fh:
            fh.write(name)
    except OSError:
        pass
    mount_home()
    port = wait_for(find_port, 20)
    if not port:
        log("no virtio-serial port named %s; the host cannot reach this guest" % PORT_NAME)
    if port:
        os.chown(port, UID, GID)        # the agent runs as uid 1000 and owns the port
    agent = start_agent(port) if port else None
    log("ready in %.1fs (agent on %s)" % (time.monotonic() - started, port))
    while True:
        try:
            pid, _ = os.wait()
        except ChildProcessError:
            time.sleep(1)
            continue
        if agent is not None and pid == agent.pid:
            log("the agent exited; restarting it")
            time.sleep(1)
            agent = start_agent(port)


def run() -> None:
    """PID 1 must never exit (the kernel would panic): log a failure and keep reaping."""
    try:
        main()
    except BaseException as exc:    # noqa: BLE001
        traceback.print_exc()
        log("init failed: %s" % exc)
        while True:
            try:
                os.wait()
            except ChildProcessError:
                time.sleep(60)


if __name__ == "__main__":
    run()
