"""Blob ids of a push's large files, hashed on a thread while the push streams them.

A push announces every file by its blob id, and before this the scan hashed each new or changed
file before the push could start: for a 50 MB file that is a third of the push (SHA-1 runs at
~1.9 GB/s here). The agent hashes every file as it stages it anyway (SECURITY.md 6). So the scan
leaves a large file's id for later: the push names it `pending` with a placeholder, streams it,
and sends the id after the stream; the agent checks the bytes it staged against that id before
it applies anything. The id still comes from a read of its own, beside the stream's, as the
scan's did: a file that changes while either reads it arrives with other bytes than the id says
and is refused ("changed while it was being sent"). A file whose stat data changed between the
scan and the end of this read is refused here, and a file a VM may already hold (the reuse and
refusal checks compare ids) is waited for before the push is sent.
"""

from __future__ import annotations

import os
import queue
import stat
import threading
import time

from .errors import SlicerError
from .wire import overlay as overlay_mod, tarstream
from .wire.paths import display

MIN_BYTES = tarstream.LARGE_FILE_BYTES


class LaterIds:
    """The scan's hash function for one push (`entry`), and the ids it left for later.

    `keep(path)`: whether the push will send `path` at all (`.slicerignore`d files are never
    hashed). Built before the scan, which then calls `attach` with its stat cache. `eager`:
    hash as soon as the scan finds a file (a push), or only once waited for."""

    def __init__(self, algo: str, keep, min_bytes: int = MIN_BYTES, eager: bool = True):
        self.algo = algo
        self.keep = keep
        self.min_bytes = min_bytes
        self.eager = eager
        self.placeholder = "0" * (64 if algo == "sha256" else 40)
        self._cache = self._cache_path = None
        self._wanted = {}                 # path -> (stat key, placeholder Entry)
        self._done = {}                   # path -> (stat key, Entry or None, lstat, when it was taken)
        self._queue = queue.SimpleQueue()
        self._thread = None
        self._stopped = False
        self._lock = threading.Lock()

    def attach(self, cache: overlay_mod.StatCache, cache_path: str) -> None:
        self._cache, self._cache_path = cache, cache_path

    def entry(self, full_path: str, rel: str):
        """The scan's hash of one file: its Entry now, or for a large regular file that the
        stat cache does not know, a placeholder Entry whose id is hashed on the thread."""
        stat_ns = time.time_ns()
        try:
            st = os.lstat(full_path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size < self.min_bytes or not self.keep(rel):
            return overlay_mod.hash_worktree_file(full_path, self.algo, self._cache, rel)
        if self._cache is not None:
            known = self._cache.get(rel, st)
            if known is not None:
                return known
        # A file this user cannot read fails the scan, as the scan's own read would (not the
        # stream, half sent).
        os.close(os.open(full_path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0)))
        key = overlay_mod.StatCache.key(st)
        entry = overlay_mod.Entry(overlay_mod.file_mode(st), self.placeholder)
        with self._lock:
            if self._wanted.get(rel, (None,))[0] != key:
                self._wanted[rel] = (key, entry)
                self._queue.put((rel, full_path, st, stat_ns))
                if self.eager:
                    self._start()
        return self._wanted[rel][1]

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._hash_all, daemon=True)
            self._thread.start()

    def pending(self, overlay: dict) -> list:
        """The paths of `overlay` whose ids are still placeholders, sorted."""
        return sorted(p for p, e in overlay["files"].items()
                      if e is not None and p in self._wanted and e is self._wanted[p][1])

    def resolved(self, overlay: dict) -> dict:
        """`overlay` with every pending id filled in (waits for the thread). Raises SlicerError
        naming a file that changed since the scan, or while it was hashed."""
        files = dict(overlay["files"])
        files.update(self.wait(self.pending(overlay)))
        return {"index": overlay["index"], "files": files}

    def wait(self, paths) -> dict:
        """{path: Entry} for these pending paths, once the thread has hashed them."""
        if not paths:
            return {}
        with self._lock:
            self._start()
        self._queue.put(None)
        self._thread.join()
        ids = {}
        for path in paths:
            key, entry, st, stat_ns = self._done.get(path, (None, None, None, 0))
            if key != self._wanted[path][0] or entry is None:
                raise SlicerError("%s changed while it was being sent; run the command again" % display(path))
            ids[path] = entry
            if self._cache is not None:          # (kept here: the scan's thread owns the cache)
                self._cache.put(path, st, entry, stat_ns)
        if self._cache is not None and self._cache_path and os.path.isdir(os.path.dirname(self._cache_path)):
            try:
                self._cache.dump(self._cache_path)
            except OSError:
                pass                          # only a cache: the next scan hashes again
        return ids

    def stop(self) -> None:
        """End the thread, unhashed files left (a push that failed before it waited)."""
        self._stopped = True
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _hash_all(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._stopped:
                return
            rel, full_path, st, stat_ns = item
            key = overlay_mod.StatCache.key(st)
            try:
                entry = overlay_mod.hash_worktree_file(full_path, self.algo)
                after = os.lstat(full_path)
            except (OSError, overlay_mod.FileChanged):
                entry = after = None
            if entry is None or overlay_mod.StatCache.key(after) != key or entry.mode != overlay_mod.file_mode(st):
                entry = None                     # gone, or changed since the scan's lstat
            self._done[rel] = (key, entry, st, stat_ns)
