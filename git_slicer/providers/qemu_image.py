"""The guest image of the qemu provider: a Debian kernel and a Debian root filesystem.

    <imageDir>/<recipe hash>/vmlinuz         the kernel of Debian's linux-image-cloud-amd64
    <imageDir>/<recipe hash>/rootfs.cpio     debootstrap --variant=minbase + python3, git, e2fsprogs,
                                             only the kernel modules the guest needs (newc cpio,
                                             booted as the initramfs: the root fs lives in RAM)
    <imageDir>/<recipe hash>/image.json      the recipe, kernel version, sizes, build time
    <imageDir>/<recipe hash>/initrd-<agent hash>.cpio
                                             rootfs.cpio + a small cpio with /init and the agent's
                                             code; made (a copy and an append) whenever the agent
                                             code changes, so the image never runs a stale agent

`imageDir` is slicer.qemu.imageDir, else $GIT_SLICER_IMAGE_CACHE, else
$XDG_CACHE_HOME/git-slicer/images. The expensive part is rebuilt only when RECIPE changes.
The kernel .deb is fetched from the same mirror debootstrap used and checked against the SHA-256
in the Packages index debootstrap verified (the same trust path as `apt-get download`); it is
unpacked in Python, nothing is installed on the host. Building needs root (debootstrap).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import lzma
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import time
import urllib.request

from ..errors import SlicerError, UsageError
from ..wire.files import utc_now

RECIPE = {
    "format": 1,                    # bump when the build steps below change meaning
    "suite": "bookworm",
    "variant": "minbase",
    "packages": ["python3", "git", "e2fsprogs"],
    "kernel": "linux-image-cloud-amd64",
    "modules": ["virtio_pci", "virtio_blk", "virtio_console", "virtio_rng", "ext4", "crc32c_generic"],
    "trim": ["usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
             "var/cache/apt", "var/lib/apt/lists", "var/log", "usr/share/zoneinfo/right",
             "usr/share/zoneinfo/posix"],
}
DEFAULT_MIRROR = "http://deb.debian.org/debian"
AGENT_DIRS = ("agent", "wire")
INIT_SCRIPT = b"#!/usr/bin/python3\nimport sys\nsys.path.insert(0, '/opt/git-slicer')\n" \
              b"from git_slicer.agent.vminit import run\nrun()\n"


def image_root(settings) -> str:
    configured = settings.get("slicer.qemu.imageDir")
    if configured:
        return configured
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "git-slicer", "images")


def recipe_for(settings) -> dict:
    recipe = dict(RECIPE)
    recipe["mirror"] = settings.get("slicer.qemu.mirror") or DEFAULT_MIRROR
    return recipe


def recipe_hash(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


class Image:
    def __init__(self, directory: str):
        self.dir = directory
        with open(os.path.join(directory, "image.json")) as fh:
            self.info = json.load(fh)
        self.kernel = os.path.join(directory, "vmlinuz")
        self.rootfs = os.path.join(directory, "rootfs.cpio")
        self.id = os.path.basename(directory)

    @property
    def kernel_version(self) -> str:
        return self.info.get("kernel_version", "")

    def initrd(self) -> str:
        """rootfs.cpio followed by the agent layer of the code running now (made once per version)."""
        layer = agent_layer()
        digest = hashlib.sha256(layer).hexdigest()[:16]
        path = os.path.join(self.dir, "initrd-%s.cpio" % digest)
        if os.path.exists(path):
            return path
        tmp = "%s.%d.tmp" % (path, os.getpid())
        with open(self.rootfs, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 4 * 1024 * 1024)
            dst.write(layer)
        os.replace(tmp, path)
        _prune_initrds(self.dir, keep=path)
        return path


def _prune_initrds(directory: str, keep: str, age: float = 3600) -> None:
    """Old agent versions' initrds: a running QEMU has its own copy in guest memory."""
    for name in os.listdir(directory):
        full = os.path.join(directory, name)
        if name.startswith("initrd-") and full != keep:
            try:
                if time.time() - os.stat(full).st_mtime > age:
                    os.unlink(full)
            except OSError:
                pass


def find_image(settings):
    directory = os.path.join(image_root(settings), recipe_hash(recipe_for(settings)))
    if os.path.exists(os.path.join(directory, "image.json")):
        return Image(directory)
    return None


# -- cpio (newc), as the kernel's initramfs unpacker reads it ----------------------
class CpioWriter:
    def __init__(self, out):
        self.out = out
        self.ino = 1
        self.links = {}

    def _entry(self, name: str, mode: int, data: bytes = b"", uid=0, gid=0, nlink=1, mtime=0,
               rdev=(0, 0), ino=None, size=None):
        encoded = name.encode("utf-8", "surrogateescape") + b"\0"
        if ino is None:
            ino, self.ino = self.ino, self.ino + 1
        size = len(data) if size is None else size
        header = b"070701" + b"".join(b"%08X" % v for v in (
            ino, mode, uid, gid, nlink, int(mtime) & 0xFFFFFFFF, size, 0, 0, rdev[0], rdev[1],
            len(encoded), 0))
        self.out.write(header + encoded + b"\0" * ((4 - (len(header) + len(encoded)) % 4) % 4))
        return size

    def _pad(self, size: int) -> None:
        self.out.write(b"\0" * ((4 - size % 4) % 4))

    def add_bytes(self, name: str, data: bytes, mode: int = 0o100644) -> None:
        self._entry(name, mode, data)
        self.out.write(data)
        self._pad(len(data))

    def add_dir(self, name: str, mode: int = 0o40755) -> None:
        self._entry(name, mode)

    def add_path(self, full: str, name: str) -> None:
        st = os.lstat(full)
        common = dict(uid=st.st_uid, gid=st.st_gid, mtime=st.st_mtime)
        if stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.links:      # a hard link: the data went with the first
                self._entry(name, st.st_mode, ino=self.links[key], nlink=st.st_nlink, size=0, **common)
                return
            ino = self.ino
            self.ino += 1
            if st.st_nlink > 1:
                self.links[key] = ino
            self._entry(name, st.st_mode, ino=ino, nlink=st.st_nlink, size=st.st_size, **common)
            with open(full, "rb") as fh:
                copied = 0
                while True:
                    block = fh.read(1024 * 1024)
                    if not block:
                        break
                    self.out.write(block)
                    copied += len(block)
            if copied != st.st_size:
                raise SlicerError("%s changed while it was archived" % full)
            self._pad(st.st_size)
        elif stat.S_ISLNK(st.st_mode):
            target = os.fsencode(os.readlink(full))
            self._entry(name, st.st_mode, size=len(target), **common)
            self.out.write(target)
            self._pad(len(target))
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            self._entry(name, st.st_mode, rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)), **common)
        elif stat.S_ISDIR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
            self._entry(name, st.st_mode, **common)
        # sockets are skipped

    def add_tree(self, root: str) -> None:
        for directory, dirs, files in os.walk(root):
            dirs.sort()
            rel = os.path.relpath(directory, root)
            if rel != ".":
                self.add_path(directory, rel)
            for name in sorted(files) + sorted(d for d in dirs if os.path.islink(os.path.join(directory, d))):
                full = os.path.join(directory, name)
                self.add_path(full, os.path.normpath(os.path.join(rel, name)))

    def finish(self) -> None:
        self._entry("TRAILER!!!", 0, ino=0, nlink=1)


def agent_layer() -> bytes:
    """A cpio with /init and the stdlib-only agent (git_slicer/__init__.py, agent/, wire/)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    buf = io.BytesIO()
    cpio = CpioWriter(buf)
    cpio.add_dir("dev")
    cpio._entry("dev/console", 0o20600, rdev=(5, 1))
    cpio.add_bytes("init", INIT_SCRIPT, 0o100755)
    for directory in ("opt", "opt/git-slicer", "opt/git-slicer/git_slicer"):
        cpio.add_dir(directory)
    with open(os.path.join(package, "__init__.py"), "rb") as fh:
        cpio.add_bytes("opt/git-slicer/git_slicer/__init__.py", fh.read())
    for sub in AGENT_DIRS:
        cpio.add_dir("opt/git-slicer/git_slicer/" + sub)
        for name in sorted(os.listdir(os.path.join(package, sub))):
            if name.endswith(".py"):
                with open(os.path.join(package, sub, name), "rb") as fh:
                    cpio.add_bytes("opt/git-slicer/git_slicer/%s/%s" % (sub, name), fh.read())
    cpio.finish()
    return buf.getvalue()


# -- Debian packages without dpkg ------------------------------------------------
def parse_packages(text: str) -> dict:
    """A Packages index as {package name: {field: value}} (the last stanza of a name wins)."""
    packages = {}
    for stanza in text.split("\n\n"):
        fields = {}
        key = None
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields:
            packages[fields["Package"]] = fields
    return packages


def kernel_package(packages: dict, meta: str) -> dict:
    """The real linux-image-<version> package a metapackage depends on."""
    entry = packages.get(meta)
    if entry is None:
        raise SlicerError("the mirror's Packages index has no %s" % meta)
    for alternative in entry.get("Depends", "").split(","):
        name = alternative.split("|")[0].split("(")[0].strip()
        if name.startswith("linux-image-") and name in packages:
            return packages[name]
    raise SlicerError("%s depends on no linux-image package in the index" % meta)


def deb_members(data: bytes) -> dict:
    """The members of a .deb (an ar archive) as {name: bytes}."""
    if not data.startswith(b"!<arch>\n"):
        raise SlicerError("not a Debian package (bad ar header)")
    members, offset = {}, 8
    while offset + 60 <= len(data):
        header = data[offset:offset + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        members[name] = data[offset + 60:offset + 60 + size]
        offset += 60 + size + (size & 1)
    return members


def module_closure(modules_dep: str, wanted, builtin=()) -> list:
    """Module paths (relative to lib/modules/<version>/) in load order: dependencies first."""
    deps, by_name = {}, {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        name = os.path.basename(path).split(".ko")[0].replace("-", "_")
        by_name[name] = path
    builtin_names = {os.path.basename(p).split(".ko")[0].replace("-", "_") for p in builtin}
    order, seen = [], set()

    def visit(path):
        if path in seen:
            return
        seen.add(path)
        # modules.dep lists the whole closure, deepest last: load in reverse
        for dep in reversed(deps.get(path, [])):
            visit(dep)
        order.append(path)
    for module in wanted:
        key = module.replace("-", "_")
        if key in builtin_names:
            continue
        if key not in by_name:
            raise SlicerError("the kernel has no module %s" % module)
        visit(by_name[key])
    return order


# -- the build -------------------------------------------------------------------
def _say(message: str) -> None:
    sys.stderr.write("git-slicer: %s\n" % message)
    sys.stderr.flush()


def build_image(settings, force: bool = False, say=_say) -> Image:
    recipe = recipe_for(settings)
    root = image_root(settings)
    digest = recipe_hash(recipe)
    final = os.path.join(root, digest)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)        # one build at a time; the second finds it done
        if os.path.exists(os.path.join(final, "image.json")) and not force:
            return Image(final)
        _check_can_build()
        work = os.path.join(root, ".build-%s-%d" % (digest, os.getpid()))
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        try:
            _build(recipe, work, say)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.rename(work, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return Image(final)


def _check_can_build() -> None:
    if shutil.which("debootstrap") is None and not os.path.exists("/usr/sbin/debootstrap"):
        raise UsageError("building the qemu image needs debootstrap", hint="apt-get install debootstrap")
    if os.geteuid() != 0:
        raise UsageError("building the qemu image needs root (debootstrap)",
                         hint="run `sudo git slicer vm image build` once, with slicer.qemu.imageDir "
                              "(or GIT_SLICER_IMAGE_CACHE) set to a directory you can read")


def _build(recipe: dict, work: str, say) -> None:
    started = time.monotonic()
    rootfs = os.path.join(work, "rootfs")
    say("building the qemu guest image (Debian %s, %s) in %s" % (recipe["suite"], ", ".join(recipe["packages"]), work))
    say("[1/4] debootstrap --variant=%s --include=%s %s" % (recipe["variant"], ",".join(recipe["packages"]), recipe["suite"]))
    _debootstrap(recipe, rootfs, say)
    say("[2/4] kernel: %s (%.0fs so far)" % (recipe["kernel"], time.monotonic() - started))
    lists = os.path.join(rootfs, "var", "lib", "apt", "lists")
    index = [n for n in os.listdir(lists) if n.endswith("_binary-amd64_Packages")]
    if not index:
        raise SlicerError("debootstrap left no Packages index in %s" % lists)
    with open(os.path.join(lists, index[0]), encoding="utf-8", errors="replace") as fh:
        package = kernel_package(parse_packages(fh.read()), recipe["kernel"])
    deb = _download(recipe["mirror"].rstrip("/") + "/" + package["Filename"], package["SHA256"], say)
    version = _install_kernel(deb, recipe["modules"], rootfs, work, say)
    say("[3/4] guest files: user agent (uid 1000), trimmed docs and caches")
    _prepare_rootfs(recipe, rootfs)
    say("[4/4] packing the root filesystem")
    with open(os.path.join(work, "rootfs.cpio"), "wb") as out:
        cpio = CpioWriter(io.BufferedWriter(out, 4 * 1024 * 1024))
        cpio.add_tree(rootfs)
        cpio.finish()
        cpio.out.flush()
    shutil.rmtree(rootfs)
    size = os.path.getsize(os.path.join(work, "rootfs.cpio"))
    info = {"recipe": recipe, "kernel_version": version, "kernel_package": package["Package"] + " " + package["Version"],
            "rootfs_bytes": size, "build_seconds": round(time.monotonic() - started, 1),
            "built_at": utc_now()}
    with open(os.path.join(work, "image.json"), "w") as fh:
        json.dump(info, fh, indent=1)
    say("image built in %.0fs: kernel %s, root filesystem %d MiB"
        % (info["build_seconds"], version, size // (1024 * 1024)))


def _debootstrap(recipe: dict, rootfs: str, say) -> None:
    argv = ["debootstrap", "--variant=" + recipe["variant"], "--include=" + ",".join(recipe["packages"]),
            recipe["suite"], rootfs, recipe["mirror"]]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LANG="C.UTF-8")
    env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/sbin"
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    seen, tail = set(), []
    for raw in proc.stdout:
        line = raw.decode("utf-8", "replace").rstrip()
        tail = (tail + [line])[-5:]
        words = line.split()
        if len(words) >= 2 and words[0] == "I:" and words[1] not in seen:
            seen.add(words[1])      # each phase once: Retrieving, Validating, Extracting, ...
            say("  debootstrap: " + line[3:])
    if proc.wait() != 0:
        last = [l for l in tail if l.strip()]
        raise SlicerError("debootstrap failed: %s" % (last[-1] if last else "exit %d" % proc.returncode))


def _download(url: str, sha256: str, say) -> bytes:
    say("  fetching %s" % url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except OSError as exc:
        raise SlicerError("cannot download %s: %s" % (url, exc)) from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise SlicerError("%s does not match the SHA-256 in the verified Packages index" % url)
    return data


def _install_kernel(deb: bytes, modules, rootfs: str, work: str, say) -> str:
    members = deb_members(deb)
    name = next((n for n in members if n.startswith("data.tar")), None)
    if name is None:
        raise SlicerError("the kernel package has no data archive")
    raw = members[name]
    if name.endswith(".xz"):
        raw = lzma.decompress(raw)      # once, so that reading members below is random access
    elif not name.endswith(".tar"):
        raise SlicerError("the kernel package's %s is not xz-compressed; this build cannot read it" % name)
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        files = {_member_name(m.name): m for m in tar.getmembers()}
        kernel = [n for n in files if n.startswith("boot/vmlinuz-")]
        if not kernel:
            raise SlicerError("the kernel package has no boot/vmlinuz")
        version = kernel[0][len("boot/vmlinuz-"):]
        prefix = next(p for p in ("lib/modules/%s/" % version, "usr/lib/modules/%s/" % version)
                      if p + "modules.order" in files or p + "modules.builtin" in files)
        with open(os.path.join(work, "vmlinuz"), "wb") as out:
            out.write(tar.extractfile(files[kernel[0]]).read())
        builtin = tar.extractfile(files[prefix + "modules.builtin"]).read().decode().split()
        dep_member = files.get(prefix + "modules.dep")
        if dep_member is not None:
            modules_dep = tar.extractfile(dep_member).read().decode()
        else:
            modules_dep = _modules_dep_from_tar(tar, files, prefix)
        order = module_closure(modules_dep, modules, builtin)
        target_dir = os.path.join(rootfs, "lib", "modules", version)
        loaded = []
        for rel in order:
            data = tar.extractfile(files[prefix + rel]).read()
            if rel.endswith(".xz"):
                data, rel = lzma.decompress(data), rel[:-3]
            dest = os.path.join(target_dir, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "wb") as out:
                out.write(data)
            loaded.append("/lib/modules/%s/%s" % (version, rel))
    os.makedirs(os.path.join(rootfs, "lib", "git-slicer"), exist_ok=True)
    with open(os.path.join(rootfs, "lib", "git-slicer", "modules.list"), "w") as fh:
        fh.write("".join(p + "\n" for p in loaded))
    say("  kernel %s with %d modules: %s" % (version, len(loaded), " ".join(
        os.path.basename(p).split(".ko")[0] for p in loaded)))
    return version


def _member_name(name: str) -> str:
    return name[2:] if name.startswith("./") else name.lstrip("/")


def _modules_dep_from_tar(tar, files, prefix) -> str:
    """Debian generates modules.dep at install time (depmod); rebuild it from .modinfo depends."""
    lines = []
    paths = {}
    for name in files:
        if name.startswith(prefix + "kernel/") and ".ko" in name:
            rel = name[len(prefix):]
            paths[os.path.basename(rel).split(".ko")[0].replace("-", "_")] = rel
    direct = {}
    for mod, rel in paths.items():
        data = tar.extractfile(files[prefix + rel]).read()
        if rel.endswith(".xz"):
            data = lzma.decompress(data)
        depends = []
        for field in data.split(b"\0"):
            if field.startswith(b"depends="):
                depends = [d for d in field[8:].decode().split(",") if d]
        direct[rel] = [paths[d.replace("-", "_")] for d in depends if d.replace("-", "_") in paths]
    for rel, deps in direct.items():
        closure, stack = [], list(deps)
        while stack:
            dep = stack.pop(0)
            if dep not in closure:
                closure.append(dep)
                stack.extend(direct.get(dep, []))
        lines.append("%s: %s" % (rel, " ".join(closure)))
    return "\n".join(lines)


def _prepare_rootfs(recipe: dict, rootfs: str) -> None:
    for rel in recipe["trim"]:
        path = os.path.join(rootfs, rel)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
            os.makedirs(path)
    with open(os.path.join(rootfs, "etc", "passwd"), "a") as fh:
        fh.write("agent:x:1000:1000:git-slicer agent:/home/agent:/bin/bash\n")
    with open(os.path.join(rootfs, "etc", "group"), "a") as fh:
        fh.write("agent:x:1000:\n")
    os.makedirs(os.path.join(rootfs, "home", "agent"), exist_ok=True)
    with open(os.path.join(rootfs, "etc", "hostname"), "w") as fh:
        fh.write("slicer\n")
