"""The file stream: a strict subset of POSIX tar (ustar + pax path records).

Stdlib only (the guest agent uses it both ways). We write and parse the format ourselves instead
of using `tarfile`: the reader must treat input as hostile, and `tarfile`'s filters have been
bypassed repeatedly (see SECURITY.md). Accepted members: regular files, directories, symlinks
(stored as data, never followed) and pax 'x' headers carrying `path`/`linkpath`/`size`.
Everything else (hardlinks, devices, FIFOs, GNU extensions, sparse files) is refused.

The reader never uses a member name as a filesystem path: contents are staged under numbered
names in a directory the caller owns, and the caller moves them into place with its own checks.
"""

from __future__ import annotations

import hashlib
import os
import stat

from .framing import StreamAborted
from .gitobj import MODE_EXEC, MODE_LINK
from .paths import UnsafePath, check_relpath, collision_key, display

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)


class UnsafeArchive(ValueError):
    pass


class Limits:
    """Caps on a file stream (plain class, not a dataclass: the agent's start-up is hot)."""

    def __init__(self, max_entries: int = 1_000_000, max_file_bytes: int = 4 * 1024 ** 3,
                 max_total_bytes: int = 16 * 1024 ** 3, max_path_bytes: int = 4096, max_depth: int = 64,
                 max_link_bytes: int = 4096):
        self.max_entries = max_entries
        self.max_file_bytes = max_file_bytes
        self.max_total_bytes = max_total_bytes
        self.max_path_bytes = max_path_bytes
        self.max_depth = max_depth
        self.max_link_bytes = max_link_bytes


class Member:
    """One accepted member: kind is "file" | "symlink" | "dir"; mode is 0o644 or 0o755; a
    symlink's target is data, never dereferenced; `staged` is where a file's bytes were put, and
    `oid` their blob id, hashed from the very bytes written there (read_members with `algo`)."""

    __slots__ = ("path", "kind", "mode", "size", "target", "staged", "oid")

    def __init__(self, path: str, kind: str, mode: int, size: int = 0, target: str = "", staged: str = ""):
        self.path, self.kind, self.mode, self.size, self.target, self.staged = path, kind, mode, size, target, staged
        self.oid = ""

    def __repr__(self) -> str:
        return "Member(%r, %r, %o, size=%d)" % (self.path, self.kind, self.mode, self.size)


# ---------------------------------------------------------------------------- writing
def _octal(value: int, width: int) -> bytes:
    return ("%0*o" % (width - 1, value)).encode() + b"\0"


def _pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode() + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length).encode()) + len(body) != length:
        length += 1
    return str(length).encode() + body


def _header(name: bytes, mode: int, size: int, typeflag: bytes, linkname: bytes = b"") -> bytes:
    block = bytearray(BLOCK)
    block[0:len(name)] = name
    block[100:108] = _octal(mode & 0o7777, 8)
    block[108:116] = _octal(0, 8)
    block[116:124] = _octal(0, 8)
    block[124:136] = _octal(size, 12)
    block[136:148] = _octal(0, 12)
    block[148:156] = b" " * 8
    block[156:157] = typeflag
    block[157:157 + len(linkname)] = linkname
    block[257:265] = b"ustar\x0000"
    checksum = sum(block)
    block[148:156] = ("%06o" % checksum).encode() + b"\0 "
    return bytes(block)


def member_header(path: str, kind: str, mode: int = 0o644, size: int = 0, target: str = "") -> bytes:
    """Header block(s) for one member; the caller then sends `size` bytes and `padding(size)`."""
    name = path.encode("utf-8", "surrogateescape")
    link = target.encode("utf-8", "surrogateescape")
    typeflag = {"file": b"0", "symlink": b"2", "dir": b"5"}[kind]
    records = b""
    if len(name) > 100 or not name.isascii():
        records += _pax_record("path", name)
        name = b"pax-long-name"
    if len(link) > 100 or not link.isascii():
        records += _pax_record("linkpath", link)
        link = b"pax-long-link"
    if size >= 8 ** 11:
        records += _pax_record("size", str(size).encode())
    head = b""
    if records:
        head = _header(b"pax-header", 0o644, len(records), b"x") + records + padding(len(records))
    return head + _header(name, mode, 0 if size >= 8 ** 11 else size, typeflag, link)


def padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


def end_of_archive() -> bytes:
    return _ZERO_BLOCK * 2


# ---------------------------------------------------------------------------- reading
class _Blocks:
    """Exact-size reads over an iterator of byte chunks."""

    def __init__(self, chunks):
        self._it = iter(chunks)
        self._buf = bytearray()

    def read(self, n: int) -> bytes:
        while len(self._buf) < n:
            try:
                self._buf += next(self._it)
            except StopIteration:
                raise UnsafeArchive("file stream ends in the middle of a member") from None
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def read_some(self, n: int):
        """Up to `n` bytes (at least one), without copying a whole chunk where one can be
        handed on: a file's data arrives in chunks of up to a MiB, and each copy costs."""
        if not self._buf:
            try:
                chunk = next(self._it)
            except StopIteration:
                raise UnsafeArchive("file stream ends in the middle of a member") from None
            if len(chunk) <= n:
                return chunk
            self._buf += chunk
        if len(self._buf) <= n:
            out, self._buf = self._buf, bytearray()
            return out
        return self.read(n)

    def drain(self) -> None:
        for _ in self._it:
            pass


WRITEBACK_BYTES = 4 << 20


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Have the kernel start writing these bytes to disk now, without waiting for it (Linux's
    POSIX_FADV_DONTNEED starts writeback of dirty pages, and drops only pages already clean):
    the sync that makes a transaction durable then waits for the tail of a large file only."""
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    except (AttributeError, OSError):
        pass


# A file this large is hashed on a thread of its own, beside its read or its write (the receiver
# here, the host's laterids.py): below it the hash costs less than the thread's handover.
LARGE_FILE_BYTES = 4 << 20


class _HashAside:
    """A digest fed on a thread of its own, so a large file's hash runs beside the receiving
    and the writing (hashlib and file writes release the GIL: on two cores a 50 MB file's
    stream takes ~35 ms instead of ~50). The pieces are never changed after they are handed
    over (each is a fresh buffer from the stream); at most 8 wait, so a receiver faster than
    the hash holds 8 MiB, not the file."""

    def __init__(self, digest):
        import queue
        import threading
        self._digest = digest
        self._pieces = queue.Queue(maxsize=8)     # a receiver ahead of the hash waits: bounded memory
        self._failed = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            piece = self._pieces.get()
            if piece is None:
                return
            if self._failed is None:        # after a failure, drain: the receiver never blocks
                try:
                    self._digest.update(piece)
                except BaseException as exc:
                    self._failed = exc

    def update(self, piece) -> None:
        self._pieces.put(piece)

    def hexdigest(self) -> str:
        """Waits for every piece handed over; also what ends the thread (call it once)."""
        self._pieces.put(None)
        self._thread.join()
        if self._failed is not None:
            raise self._failed
        return self._digest.hexdigest()


def _write_all(out, data) -> None:
    view = memoryview(data)
    while view:
        view = view[out.write(view):]


def _parse_octal(field: bytes, what: str) -> int:
    text = field.rstrip(b"\0 ").lstrip(b" ")
    if not text:
        return 0
    if not all(48 <= c <= 55 for c in text):
        raise UnsafeArchive("malformed %s field in the file stream" % what)
    return int(text, 8)


def _parse_pax(data: bytes) -> dict:
    records = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            raise UnsafeArchive("malformed pax record")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise UnsafeArchive("malformed pax record length") from None
        record = data[space + 1:pos + length]
        if length <= 0 or pos + length > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise UnsafeArchive("malformed pax record")
        key, value = record[:-1].split(b"=", 1)
        key = key.decode("ascii", "replace")
        if key not in ("path", "linkpath", "size", "mtime"):
            raise UnsafeArchive("unsupported pax record %r" % key)
        if key in records:
            raise UnsafeArchive("duplicate pax record %r" % key)
        records[key] = value
        pos += length
    return records


def read_members(chunks, staging_dir: str, limits: Limits = Limits(), check_collisions: bool = True,
                 control_ok=False, algo: str = None):
    """Parse a file stream, staging file contents under `staging_dir`; return the members.
    With `algo` ("sha1", "sha256"), each file's blob id is computed from the bytes as they are
    written (Member.oid): the receiver checks them without reading the files again.

    Raises UnsafeArchive on anything outside the accepted subset or over a limit. Names are
    validated (no absolute paths, '..', .git, control characters unless `control_ok` allows
    them: see paths.check_relpath), duplicates and
    case/Unicode-colliding names are refused, and no member may sit below a file or symlink.
    """
    blocks = _Blocks(chunks)
    members: list = []
    seen: dict = {}
    leaves: set = set()     # paths of files and symlinks: nothing may be placed below them
    parents: set = set()    # directories implied by earlier members: no file or symlink may take their name
    total = 0
    pax: dict = {}
    while True:
        header = blocks.read(BLOCK)
        if header == _ZERO_BLOCK:
            if blocks.read(BLOCK) != _ZERO_BLOCK:
                raise UnsafeArchive("malformed end of file stream")
            blocks.drain()
            return members
        if header[257:265] != b"ustar\x0000":
            raise UnsafeArchive("file stream member is not POSIX ustar")
        stored = _parse_octal(header[148:156], "checksum")
        if stored != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            raise UnsafeArchive("file stream header checksum mismatch")
        typeflag = header[156:157]
        size = _parse_octal(header[124:136], "size")
        if typeflag == b"x":
            if pax or size > 64 * 1024:
                raise UnsafeArchive("oversized or repeated pax header")
            pax = _parse_pax(blocks.read(size + len(padding(size)))[:size])
            continue
        if typeflag not in (b"0", b"\0", b"2", b"5"):
            kinds = {b"1": "hard link", b"3": "character device", b"4": "block device",
                     b"6": "FIFO", b"7": "contiguous file", b"g": "global pax header",
                     b"L": "GNU long name", b"K": "GNU long link", b"S": "sparse file"}
            raise UnsafeArchive("refusing %s member in the file stream"
                                % kinds.get(typeflag, "unknown (%r)" % typeflag))
        raw_name = pax.get("path") or header[:100].split(b"\0", 1)[0]
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix and "path" not in pax:
            raw_name = prefix + b"/" + raw_name
        if "size" in pax:
            try:
                size = int(pax["size"])
            except ValueError:
                raise UnsafeArchive("malformed pax size") from None
        path = raw_name.decode("utf-8", "surrogateescape")
        kind = {b"2": "symlink", b"5": "dir"}.get(typeflag, "file")
        if size < 0 or (kind != "file" and size):
            raise UnsafeArchive("bad size for member %s" % display(path))
        if kind == "dir":
            path = path.rstrip("/")
        try:
            check_relpath(path, max_bytes=limits.max_path_bytes, max_depth=limits.max_depth, control_ok=control_ok)
        except UnsafePath as exc:
            raise UnsafeArchive(str(exc)) from None
        key = collision_key(path) if check_collisions else path
        if key in seen:
            raise UnsafeArchive("duplicate or colliding names in the file stream: %s and %s"
                                % (display(seen[key]), display(path)))
        seen[key] = path
        parts = key.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in leaves:
                raise UnsafeArchive("member below a file or symlink: %s" % display(path))
            parents.add("/".join(parts[:depth]))
        if kind != "dir" and key in parents:
            raise UnsafeArchive("file or symlink over an earlier member's directory: %s" % display(path))
        if len(members) >= limits.max_entries:
            raise UnsafeArchive("file stream has more than %d members" % limits.max_entries)
        mode = _parse_octal(header[100:108], "mode")
        member = Member(path=path, kind=kind, mode=0o755 if mode & 0o100 else 0o644)
        if kind == "symlink":
            target = pax.get("linkpath") or header[157:257].split(b"\0", 1)[0]
            if not target or len(target) > limits.max_link_bytes or b"\0" in target:
                raise UnsafeArchive("empty or oversized symlink target: %s" % display(path))
            member.target = target.decode("utf-8", "surrogateescape")
            leaves.add(key)
        elif kind == "file":
            if size > limits.max_file_bytes:
                raise UnsafeArchive("file larger than %d bytes: %s" % (limits.max_file_bytes, display(path)))
            total += size
            if total > limits.max_total_bytes:
                raise UnsafeArchive("file stream larger than %d bytes" % limits.max_total_bytes)
            member.size = size
            member.staged = os.path.join(staging_dir, "%08d" % len(members))
            fd = os.open(member.staged,
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            digest = None
            if algo:
                digest = hashlib.new(algo, b"blob %d\0" % size)
                if size >= LARGE_FILE_BYTES:
                    try:
                        digest = _HashAside(digest)
                    except RuntimeError:          # no thread to be had: hash inline
                        pass
            try:
                with os.fdopen(fd, "wb", buffering=0) as out:
                    remaining, flushed = size, 0
                    while remaining:
                        piece = blocks.read_some(min(remaining, 1024 * 1024))
                        if digest is not None:
                            digest.update(piece)
                        _write_all(out, piece)
                        remaining -= len(piece)
                        if size - remaining - flushed >= WRITEBACK_BYTES:
                            _start_writeback(fd, flushed, size - remaining - flushed)
                            flushed = size - remaining
            finally:
                if digest is not None:
                    member.oid = digest.hexdigest()
            blocks.read(len(padding(size)))
            leaves.add(key)
        pax = {}
        members.append(member)


# ---------------------------------------------------------------------------- sending files
def file_stream(root: str, wanted: dict, algo: str = "sha1", extra=(), receiver_checks: bool = False):
    """Yield a file stream of worktree files, each checked against its announced blob id.

    `wanted` maps path -> Entry (mode, oid). A file whose bytes no longer hash to its oid (it changed
    after the scan, or while it was read) aborts the stream, so the receiver never gets a torn
    or unannounced file. With `receiver_checks` (a push: the agent hashes every file as it
    stages it and refuses one that differs from its announced oid), a regular file's bytes are
    not hashed here, only its size checked: the receiver's check is the one that counts, and the
    sender's is the CPU a large file's stream waits for. `extra` paths are sent as found
    (gitignored files on request). FIFOs, sockets and devices are never opened.
    """

    def changed(path):
        return StreamAborted("%s changed while it was being sent; run the command again" % display(path))

    items = [(p, e) for p, e in sorted(wanted.items())] + [(p, None) for p in extra]
    for path, entry in items:
        check_relpath(path, control_ok=True)        # the sender's own paths (or ones its peer asked for)
        full = os.path.join(root, path)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            if entry is None:
                continue
            raise changed(path) from None
        if entry is not None and entry.mode == MODE_LINK or entry is None and os.path.islink(full):
            target = os.readlink(os.fsencode(full))
            digest = hashlib.new(algo, b"blob %d\0" % len(target) + target)
            if entry is not None and digest.hexdigest() != entry.oid:
                raise changed(path)
            yield member_header(path, "symlink", target=os.fsdecode(target))
            continue
        if not _is_regular(st.st_mode):
            if entry is None:
                continue
            raise changed(path)
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb", buffering=0) as fh:
            size = os.fstat(fd).st_size
            executable = entry.mode == MODE_EXEC if entry is not None else bool(st.st_mode & 0o100)
            yield member_header(path, "file", 0o755 if executable else 0o644, size)
            digest = None if receiver_checks or entry is None else hashlib.new(algo, b"blob %d\0" % size)
            remaining = size
            while remaining:
                block = fh.read(min(remaining, 1024 * 1024))
                if not block:
                    raise changed(path)
                if digest is not None:
                    digest.update(block)
                remaining -= len(block)
                yield block
            if fh.read(1) or (digest is not None and digest.hexdigest() != entry.oid):
                raise changed(path)
        yield padding(size)
    yield end_of_archive()


def _is_regular(mode: int) -> bool:
    return stat.S_ISREG(mode)
