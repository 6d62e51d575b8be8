"""Protocol v1 framing: length-prefixed frames over any byte stream.

Stdlib only: the guest agent imports this module. See docs/protocol.md.

A frame is a 1-byte type, a 4-byte big-endian payload length, then the payload:
  J  a JSON control message (UTF-8 object)
  D  a chunk of the current binary stream
  Z  end of the current binary stream: JSON {"bytes": n}
  A  abort of the current binary stream: JSON {"message": text}
"""

from __future__ import annotations

import io
import json
import os
import struct

from .paths import display

PROTOCOL_VERSION = 1
AGENT_NAME = "git-slicer-agent"
HEADER = struct.Struct(">cI")
CHUNK = 1024 * 1024               # = MAX_DATA_FRAME: big frames bypass write buffers
MAX_DATA_FRAME = 1024 * 1024
DEFAULT_MAX_JSON = 64 * 1024 * 1024
MAX_JSON_DEPTH = 32               # our messages nest 4 deep; json.loads would recurse ~1000 deep
_NOT_STRUCTURE = bytes(range(256)).translate(None, b'[]{}"')   # bytes that cannot nest


class ProtocolError(Exception):
    """The peer broke the protocol (bad frame, limit exceeded, digest mismatch)."""


class RemoteError(Exception):
    """The peer answered a request with an explicit error."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def crash_point(phase: str) -> None:
    """Test hook: die at once (no cleanup) when GIT_SLICER_TEST_CRASH_AT names this phase; wait
    there when GIT_SLICER_TEST_HOLD_AT does (GIT_SLICER_TEST_HOLD_DIR gets a file `held`, and
    the wait ends when a file `go` appears there, or after a minute)."""
    if os.environ.get("GIT_SLICER_TEST_CRASH_AT") == phase:
        os._exit(99)
    if os.environ.get("GIT_SLICER_TEST_HOLD_AT") == phase and os.environ.get("GIT_SLICER_TEST_HOLD_DIR"):
        import time
        directory = os.environ["GIT_SLICER_TEST_HOLD_DIR"]
        open(os.path.join(directory, "held"), "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(directory, "go")) and time.monotonic() < deadline:
            time.sleep(0.02)


class StreamAborted(ProtocolError):
    """The sender abandoned a binary stream part-way (e.g. a file changed under it)."""


class Connection:
    """Frames over a pair of binary file objects (pipes, socket files)."""

    def __init__(self, reader, writer, max_json: int = DEFAULT_MAX_JSON):
        self._r = reader
        # A buffered reader fills a fresh, unzeroed buffer itself (readinto needs a zeroed one:
        # 3 ms of memset per 50 MB received); other readers (qemu's, the websocket's) offer
        # readinto only.
        self._read_whole = reader.read if isinstance(reader, io.BufferedReader) else None
        self._w = writer
        self.max_json = max_json
        self.bytes_in = 0
        self.bytes_out = 0
        self.on_progress = None      # called with the size of each stream chunk
        self.closed_reason = ""     # why the host cut the connection (e.g. a deadline), for messages

    # -- low level -------------------------------------------------------
    def _read_exact(self, n: int):
        # A fresh buffer per frame, returned as is: no copy (memory bandwidth is the limit).
        if self._read_whole is not None:
            data = self._read_whole(n)
            if len(data) != n:
                if self.closed_reason:
                    raise ProtocolError(self.closed_reason)
                raise ProtocolError("connection closed by peer" if not data and n else
                                    "connection closed in the middle of a frame")
            self.bytes_in += n
            return data
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self._r.readinto(view[got:])
            if not k:
                if self.closed_reason:
                    raise ProtocolError(self.closed_reason)
                raise ProtocolError("connection closed by peer" if got == 0 and n else
                                    "connection closed in the middle of a frame")
            got += k
        self.bytes_in += n
        return buf

    def read_frame(self):
        kind, length = HEADER.unpack(self._read_exact(HEADER.size))
        limit = self.max_json if kind in (b"J", b"Z", b"A") else MAX_DATA_FRAME
        if kind not in (b"J", b"D", b"Z", b"A"):
            raise ProtocolError("unknown frame type %r" % kind)
        if length > limit:
            raise ProtocolError("frame of %d bytes exceeds the limit of %d" % (length, limit))
        return kind, self._read_exact(length)

    def write_frame(self, kind: bytes, payload: bytes) -> None:
        self._w.write(HEADER.pack(kind, len(payload)))
        if payload:
            self._w.write(payload)
        self.bytes_out += HEADER.size + len(payload)

    def flush(self) -> None:
        self._w.flush()

    # -- JSON messages ---------------------------------------------------
    def send(self, message: dict) -> None:
        self.write_frame(b"J", json.dumps(message, separators=(",", ":")).encode())
        self.flush()

    def recv(self) -> dict:
        kind, payload = self.read_frame()
        if kind != b"J":
            raise ProtocolError("expected a control message, got a %r frame" % kind)
        check_depth(payload)
        try:
            message = json.loads(payload)
        except (ValueError, RecursionError) as exc:
            raise ProtocolError("malformed control message: %s" % exc) from None
        if not isinstance(message, dict):
            raise ProtocolError("control message is not an object")
        return message

    def recv_reply(self) -> dict:
        """Receive a reply; raise RemoteError if it carries an error."""
        message = self.recv()
        if message.get("ok") is not True:
            err = message.get("error")
            if not isinstance(err, dict):
                raise ProtocolError("reply is neither ok nor a well-formed error")
            raise RemoteError(display(str(err.get("code", "error"))[:100]),
                              display(str(err.get("message", ""))[:2000]))
        return message

    # -- binary streams --------------------------------------------------
    def send_stream(self, chunks) -> int:
        """Send an iterable of byte chunks as one stream; return its length."""
        total = 0
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                for start in range(0, len(view), CHUNK):
                    part = view[start:start + CHUNK]
                    total += len(part)
                    self.write_frame(b"D", part)
                    if self.on_progress is not None:
                        self.on_progress(len(part))
        except StreamAborted as exc:
            self.write_frame(b"A", json.dumps({"message": str(exc)}).encode())
            self.flush()
            raise
        self.write_frame(b"Z", json.dumps({"bytes": total}).encode())
        self.flush()
        return total

    def send_stream_from(self, fileobj) -> int:
        """Send everything readable from a binary file object (e.g. a pipe)."""
        def chunks():
            while True:
                block = fileobj.read1(CHUNK) if hasattr(fileobj, "read1") else fileobj.read(CHUNK)
                if not block:
                    return
                yield block
        return self.send_stream(chunks())

    def recv_stream(self, max_bytes: int):
        """Yield the chunks of one incoming stream, verifying its length.

        The generator must be exhausted: the length is checked after the last chunk. There is no
        channel checksum: every transport is a reliable byte stream, and content is verified on
        its own (a pack's SHA trailer by index-pack, each file against its blob id), so a CRC
        would only halve the throughput (it was measured at 40% of a stream's time here).
        """
        total = 0
        while True:
            kind, payload = self.read_frame()
            if kind == b"D":
                total += len(payload)
                if total > max_bytes:
                    raise ProtocolError("stream exceeds the limit of %d bytes" % max_bytes)
                if self.on_progress is not None:
                    self.on_progress(len(payload))
                yield payload
            elif kind == b"Z":
                try:
                    trailer = json.loads(payload)
                except ValueError:
                    raise ProtocolError("malformed end-of-stream frame") from None
                if not isinstance(trailer, dict) or trailer.get("bytes") != total:
                    raise ProtocolError("stream length mismatch (%d bytes received, the sender counted %s)"
                                        % (total, display(str(trailer.get("bytes") if isinstance(trailer, dict)
                                                                  else "nothing"))[:30]))
                return
            elif kind == b"A":
                try:
                    reason = str(json.loads(payload).get("message", ""))
                except (ValueError, AttributeError):
                    reason = ""
                raise StreamAborted("sender aborted the stream: %s" % display(reason[:500]))
            else:
                raise ProtocolError("unexpected %r frame inside a stream" % kind)


def check_depth(payload, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON nested deeper than `limit` before parsing it (a deep `[[[[...` would make
    json.loads recurse until RecursionError). Escapes go first, then all but brackets and
    quotes, then strings; innermost pairs are removed once per level: C-speed passes, at most
    `limit` of them (about a third of json.loads' time on a large state)."""
    if payload.count(b"[") + payload.count(b"{") <= limit:
        return
    text = bytes(payload)
    if b"\\" in text:
        text = text.replace(b"\\\\", b"").replace(b'\\"', b"")     # escapes, left to right
    # Only brackets and quotes left; dropping adjacent quotes ("" is an empty string, or the end
    # of one string and the start of the next) keeps strings paired and loses no outside bracket.
    brackets = text.translate(None, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in brackets:
        brackets = b"".join(brackets.split(b'"')[::2])           # what is left of strings: cut out
    for _ in range(limit):
        if not brackets:
            return
        brackets = brackets.replace(b"[]", b"").replace(b"{}", b"")
    if brackets:
        raise ProtocolError("control message nested deeper than %d levels" % limit)


def error_reply(code: str, message: str) -> dict:
    return {"ok": False, "error": {"code": code, "message": message}}
