"""Small file and time helpers both sides use (stdlib only: the guest agent ships with this).

`write_atomic` replaces a file so readers see the old or the new contents, never a mix;
`utc_now` is the one timestamp format of links, VM records, logs and the hooks' state.
Only `os` and `time` are imported: the hooks' background runner uses this module too.
"""

from __future__ import annotations

import os
import time

TIMESTAMP = "%Y-%m-%dT%H:%M:%SZ"
COMPACT_TIMESTAMP = "%Y%m%dT%H%M%SZ"        # the same moment, fit for a ref name


def utc_now(compact: bool = False) -> str:
    """Now in UTC, ISO 8601 to the second (`compact`: without '-' and ':')."""
    return time.strftime(COMPACT_TIMESTAMP if compact else TIMESTAMP, time.gmtime())


def write_atomic(path: str, data: bytes, mode: int = None, durable: bool = True,
                 sync_dir: bool = False) -> None:
    """Write `path` so readers see the old or the new contents, never a mix.

    The data goes to a fresh temporary file beside `path` (created 0600, or with `mode`'s
    permission bits, e.g. a hook's executable bit), then is renamed over it. `durable`: the data
    is on disk before the rename (off for caches a crash may lose); `sync_dir`: the rename is
    too (journals that recovery reads). A failed write leaves `path` as it was and no temporary
    file behind."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = _create_beside(directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if sync_dir:
        try:
            dir_fd = os.open(directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)


def _create_beside(directory: str):
    """(fd, path) of a new, empty 0600 file `.tmp-<random>` in `directory` (what
    tempfile.mkstemp does, without importing tempfile on the hooks' path)."""
    while True:
        tmp = os.path.join(directory, ".tmp-" + os.urandom(6).hex())
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
                           | getattr(os, "O_NOFOLLOW", 0), 0o600), tmp
        except FileExistsError:
            continue
