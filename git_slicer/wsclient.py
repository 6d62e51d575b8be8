"""A small WebSocket client (RFC 6455) over an already connected socket: the opening handshake,
masked binary frames, ping/pong and close. Stdlib only. The Slicer provider uses it for the
daemon's `/vm/{h}/forward` tunnel (raw bytes to a socket in the VM) and `/vm/{h}/shell` (a PTY).

`WebSocketStream` turns a tunnel into the reader/writer pair a wire Connection wants.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
import threading

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_HEADER_BYTES = 64 * 1024
MAX_MESSAGE = 64 * 1024 * 1024      # what one message from the server may take in memory


class WebSocketError(OSError):
    """The peer broke the protocol, or the connection ended in a way the caller must report."""


class HandshakeRefused(WebSocketError):
    """The server answered the upgrade with an HTTP status other than 101."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__("HTTP %d%s" % (status, (": " + message) if message else (" " + reason if reason else "")))
        self.status = status
        self.message = message


def _read_head(sock) -> tuple:
    """(head bytes, bytes after it): reads until the blank line that ends the HTTP headers."""
    data = b""
    while b"\r\n\r\n" not in data:
        block = sock.recv(4096)
        if not block:
            raise WebSocketError("the server closed the connection during the WebSocket handshake")
        data += block
        if len(data) > MAX_HEADER_BYTES:
            raise WebSocketError("the WebSocket handshake answer is too long")
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _refusal(sock, status: int, reason: str, headers: dict, rest: bytes) -> HandshakeRefused:
    length = headers.get("content-length")
    body = rest
    try:
        want = min(int(length), 65536) if length is not None else 0
        while len(body) < want:
            block = sock.recv(want - len(body))
            if not block:
                break
            body += block
    except (OSError, ValueError):
        pass
    try:
        message = str(json.loads(body).get("error") or "")
    except (ValueError, AttributeError):
        message = body.decode("utf-8", "replace").strip()[:300]
    return HandshakeRefused(status, reason, message)


def connect(sock, host: str, path: str, headers=None) -> "WebSocket":
    """Upgrade `sock` (connected, with the caller's timeout) to a WebSocket at `path`."""
    key = base64.b64encode(os.urandom(16))
    lines = ["GET %s HTTP/1.1" % path, "Host: %s" % host, "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Key: %s" % key.decode(), "Sec-WebSocket-Version: 13"]
    lines += ["%s: %s" % (k, v) for k, v in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    head, rest = _read_head(sock)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise WebSocketError("not an HTTP answer to the WebSocket handshake: %r" % status_line[:80])
    found = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        found[name.strip().lower()] = value.strip()
    status = int(parts[1])
    if status != 101:
        raise _refusal(sock, status, parts[2] if len(parts) > 2 else "", found, rest)
    expected = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
    if found.get("upgrade", "").lower() != "websocket" or found.get("sec-websocket-accept") != expected:
        raise WebSocketError("the server's WebSocket handshake answer is not valid")
    return WebSocket(sock, rest)


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return b""
    # One big-integer XOR: fast for the 1 MiB frames the protocol sends.
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


class WebSocket:
    """One client connection: send_binary / recv_message / close. Safe for one reader thread and
    any number of writer threads (pongs are sent from the reader)."""

    def __init__(self, sock, buffered: bytes = b""):
        self.sock = sock
        self._buf = bytearray(buffered)
        self._send_lock = threading.Lock()
        self.closed = False           # the server sent a close frame (or the socket ended)
        self.close_code = None
        self.close_reason = ""
        self._close_sent = False

    # -- sending -------------------------------------------------------------
    def send_frame(self, opcode: int, payload: bytes = b"") -> None:
        payload = bytes(payload)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        key = os.urandom(4)
        with self._send_lock:
            if self._close_sent:
                raise WebSocketError("the WebSocket is closed")
            if opcode == OP_CLOSE:
                self._close_sent = True
            self.sock.sendall(header + key + _mask(payload, key))

    def send_binary(self, data) -> None:
        self.send_frame(OP_BINARY, data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (once) and shut the socket."""
        try:
            self.send_frame(OP_CLOSE, struct.pack("!H", code) + reason.encode()[:120])
        except OSError:
            pass
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    # -- receiving -------------------------------------------------------------
    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            block = self.sock.recv(max(65536, n - len(self._buf)))
            if not block:
                raise WebSocketError("the WebSocket connection ended without a close frame")
            self._buf += block
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def _frame(self):
        first, second = self._read(2)
        opcode, fin = first & 0x0F, bool(first & 0x80)
        if first & 0x70:
            raise WebSocketError("the server sent a WebSocket frame with reserved bits set")
        n = second & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8))[0]
        if n > MAX_MESSAGE:
            raise WebSocketError("the server sent a WebSocket frame of %d bytes" % n)
        key = self._read(4) if second & 0x80 else None     # servers must not mask; tolerate it
        payload = self._read(n)
        return opcode, fin, _mask(payload, key) if key else payload

    def recv_message(self):
        """(opcode, payload) of the next text or binary message; None after the server's close."""
        if self.closed:
            return None
        parts, kind = [], None
        while True:
            opcode, fin, payload = self._frame()
            if opcode == OP_PING:
                try:
                    self.send_frame(OP_PONG, payload)
                except OSError:
                    pass
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                self.closed = True
                if len(payload) >= 2:
                    self.close_code = struct.unpack("!H", payload[:2])[0]
                    self.close_reason = payload[2:].decode("utf-8", "replace")
                try:
                    self.send_frame(OP_CLOSE, payload[:2])
                except OSError:
                    pass
                return None
            if opcode in (OP_TEXT, OP_BINARY):
                if kind is not None:
                    raise WebSocketError("the server started a new WebSocket message inside another")
                kind = opcode
            elif opcode == OP_CONT:
                if kind is None:
                    raise WebSocketError("the server sent a WebSocket continuation with nothing to continue")
            else:
                raise WebSocketError("the server sent an unknown WebSocket opcode %d" % opcode)
            parts.append(payload)
            if sum(len(p) for p in parts) > MAX_MESSAGE:
                raise WebSocketError("the server sent a WebSocket message over %d bytes" % MAX_MESSAGE)
            if fin:
                return kind, b"".join(parts)


class WebSocketStream:
    """A WebSocket carrying a raw byte stream (inlets-style): `readinto` for the reader side,
    `write`/`flush` (one binary message per flush) for the writer side."""

    def __init__(self, ws: WebSocket, flush_at: int = 1024 * 1024):
        self.ws = ws
        self._pending = b""
        self._out = bytearray()
        self._flush_at = flush_at

    def readinto(self, view) -> int:
        while not self._pending:
            message = self.ws.recv_message()
            if message is None:
                return 0
            self._pending = memoryview(message[1])
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def write(self, data) -> int:
        self._out += data
        if len(self._out) >= self._flush_at:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._out:
            data, self._out = bytes(self._out), bytearray()
            self.ws.send_binary(data)
