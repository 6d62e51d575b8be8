"""The handshake that opens every session on a virtio-serial port (qemu), both ends of it
(stdlib only: the guest's serial agent uses it).

    host  -> guest   GIT-SLICER-SYNC <32 hex>\\n
    guest -> host    GIT-SLICER-ACK <same hex>\\n      then protocol v1 frames (hello ... bye)

A fresh random nonce per session lets each end skip what an earlier, aborted session left in
flight (agent/serial.py explains why a port needs it).
"""

from __future__ import annotations

import re
import secrets

SYNC = b"GIT-SLICER-SYNC "
ACK = b"GIT-SLICER-ACK "
NONCE_BYTES = 16                # sent as 32 lowercase hex digits
SYNC_RE = re.compile(re.escape(SYNC) + rb"([0-9a-f]{%d})\n" % (2 * NONCE_BYTES))


def new_nonce() -> bytes:
    return secrets.token_hex(NONCE_BYTES).encode()


def sync_line(nonce: bytes) -> bytes:
    return SYNC + nonce + b"\n"


def ack_line(nonce: bytes) -> bytes:
    return ACK + nonce + b"\n"


def ack_pattern(nonce: bytes):
    """The guest's answer to `nonce`, to search for in what the port returns."""
    return re.compile(re.escape(ack_line(nonce)))
