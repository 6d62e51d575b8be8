"""The guest agent on a virtio-serial port: one host connection after another.

    python3 -m git_slicer.agent.serial /dev/vport1p1

A virtio-serial port is a single byte pipe with no connection concept: the host end is a QEMU
chardev unix socket that one host process at a time connects to, and bytes from an earlier,
aborted operation may still be in flight either way. So every operation opens with a
sync/ack handshake carrying a fresh random nonce:

    host  -> guest   GIT-SLICER-SYNC <32 hex>\\n
    guest -> host    GIT-SLICER-ACK <same hex>\\n      then protocol v1 frames (hello ... bye)

The guest discards everything until it sees a well-formed sync line; the host discards everything
until it sees the ack carrying its own nonce. A session ends with `bye`, at end of file (the host
disconnected: the port reads EOF once drained) or on any protocol error, and the loop goes back
to waiting for a sync. Stdlib only.
"""

from __future__ import annotations

import io
import os
import select
import sys
import time

from ..wire.framing import Connection
from ..wire.serialsync import SYNC_RE, ack_line
from . import memo
from .server import Agent

IDLE_SLEEP = 0.1


class PortReader(io.RawIOBase):
    """Raw reads from the port; b"" (EOF) when the host is gone and nothing is left to read."""

    def __init__(self, fd: int, pending: bytes = b""):
        super().__init__()
        self.fd = fd
        self.pending = pending

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        if self.pending:
            n = min(len(buf), len(self.pending))
            buf[:n] = self.pending[:n]
            self.pending = self.pending[n:]
            return n
        data = os.read(self.fd, len(buf))
        buf[:len(data)] = data
        return len(data)


class PortWriter(io.RawIOBase):
    def __init__(self, fd: int):
        super().__init__()
        self.fd = fd

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return os.write(self.fd, data)


def wait_for_sync(fd: int):
    """Block until a sync line arrives; return (nonce, bytes that followed it)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    tail = b""
    while True:
        events = poller.poll()
        data = b""
        if any(ev & select.POLLIN for _, ev in events):
            data = os.read(fd, 65536)
        if not data:
            # No host connected (the port reports HUP and reads EOF): nothing to wait on but time.
            time.sleep(IDLE_SLEEP)
            continue
        tail += data
        match = SYNC_RE.search(tail)
        if match:
            return match.group(1), tail[match.end():]
        tail = tail[-64:]


def serve_port(path: str) -> int:
    fd = os.open(path, os.O_RDWR)
    memo.enable()                   # one process, session after session: it remembers its scans
    sys.stderr.write("git-slicer agent: serving %s\n" % path)
    sys.stderr.flush()
    while True:
        nonce, rest = wait_for_sync(fd)
        try:
            os.write(fd, ack_line(nonce))
            reader = io.BufferedReader(PortReader(fd, rest), 256 * 1024)
            writer = io.BufferedWriter(PortWriter(fd), 1024 * 1024)
            Agent(Connection(reader, writer)).serve()
            writer.flush()
        except Exception as exc:      # noqa: BLE001 - one bad session must not end the loop
            sys.stderr.write("git-slicer agent: session ended: %s\n" % exc)
            sys.stderr.flush()


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        sys.stderr.write("usage: python3 -m git_slicer.agent.serial /dev/vportNpM\n")
        return 2
    return serve_port(args[0])


if __name__ == "__main__":
    sys.exit(main())
