"""The per-VM egress log: one JSON line per connection the proxy saw, allowed or refused.

It lives in the VM's host-side directory (never in the VM's disk: the VM cannot edit it), is
appended to with one write per line (several commands may proxy for the same VM at once), and
is rotated once it passes MAX_BYTES (one older file kept).
"""

from __future__ import annotations

import json
import os

from ..wire.files import utc_now

MAX_BYTES = 8 * 1024 * 1024


class EgressLog:
    def __init__(self, path: str):
        self.path = path

    def write(self, **entry) -> None:
        entry = {"time": utc_now(), **entry}
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        try:
            if os.path.getsize(self.path) > MAX_BYTES:
                os.replace(self.path, self.path + ".1")
        except OSError:
            pass
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return                      # the VM was removed meanwhile: nothing left to log into
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def read(self, limit: int = 0) -> list:
        """The entries, oldest first (the last `limit` ones when limit > 0)."""
        entries = []
        for path in (self.path + ".1", self.path):
            try:
                with open(path, "rb") as fh:
                    for line in fh:
                        try:
                            entries.append(json.loads(line))
                        except ValueError:
                            continue
            except FileNotFoundError:
                continue
        return entries[-limit:] if limit > 0 else entries


def describe(entry: dict) -> str:
    """One entry as a line for `git slicer vm log`."""
    target = "%s:%s" % (entry.get("host") or "?", entry.get("port") or "?")
    text = "%s %-8s %-7s %s" % (entry.get("time", ""), entry.get("verdict", "?"), entry.get("method", "?"), target)
    if entry.get("verdict") == "allowed":
        text += "  up %d B, down %d B" % (entry.get("up", 0), entry.get("down", 0))
    if entry.get("reason"):
        text += "  (%s)" % entry["reason"]
    return text
