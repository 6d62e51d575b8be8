"""`git slicer shell` on a Slicer VM: the daemon's /vm/{h}/shell WebSocket PTY, in the SDK's shell
frames (1 type byte + u32 big-endian length + payload): data, window size (cols, rows as two
u32), shutdown, heartbeat, session close. The terminal is raw while the session lasts."""

from __future__ import annotations

import os
import select
import signal
import struct
import sys
import termios
import threading
import tty as ttymod

from .. import wsclient

DATA, WINDOW_SIZE, SHUTDOWN, HEARTBEAT, SESSION_CLOSE = 0x01, 0x02, 0x03, 0x04, 0x05
HEARTBEAT_SECONDS = 30


def frame(kind: int, payload: bytes = b"") -> bytes:
    return struct.pack("!BI", kind, len(payload)) + payload


class ShellSession:
    def __init__(self, ws: "wsclient.WebSocket", stdin=None, stdout=None):
        self.ws = ws
        self.stdin_fd = (stdin or sys.stdin).fileno()
        self.out = stdout or sys.stdout.buffer
        self.ended = threading.Event()

    def _send(self, kind: int, payload: bytes = b"") -> None:
        try:
            self.ws.send_binary(frame(kind, payload))
        except OSError:
            self.ended.set()

    def _window(self, *_):
        try:
            cols, rows = os.get_terminal_size(self.stdin_fd)
        except OSError:
            return
        self._send(WINDOW_SIZE, struct.pack("!II", cols, rows))

    def _receive(self) -> None:
        try:
            while True:
                message = self.ws.recv_message()
                if message is None or len(message[1]) < 5:
                    break
                kind, length = struct.unpack("!BI", message[1][:5])
                if kind == DATA:
                    self.out.write(message[1][5:5 + length])
                    self.out.flush()
                elif kind in (SHUTDOWN, SESSION_CLOSE):
                    break
        except OSError:
            pass
        self.ended.set()

    def _heartbeat(self) -> None:
        while not self.ended.wait(HEARTBEAT_SECONDS):
            self._send(HEARTBEAT)

    def run(self) -> int:
        tty = os.isatty(self.stdin_fd)
        saved = None
        if tty:
            saved = termios.tcgetattr(self.stdin_fd)
            ttymod.setraw(self.stdin_fd)
            self._window()
            old_winch = signal.signal(signal.SIGWINCH, self._window)
        threading.Thread(target=self._receive, daemon=True).start()
        threading.Thread(target=self._heartbeat, daemon=True).start()
        try:
            self._pump_stdin()
            self.ended.wait()
        finally:
            if saved is not None:
                termios.tcsetattr(self.stdin_fd, termios.TCSADRAIN, saved)
                signal.signal(signal.SIGWINCH, old_winch)
            self.ws.close()
        return 0

    def _pump_stdin(self) -> None:
        while not self.ended.is_set():
            ready, _, _ = select.select([self.stdin_fd], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(self.stdin_fd, 65536)
            except OSError:
                data = b""
            if not data:
                self._send(DATA, b"\x04")      # end of input: the PTY's end-of-file character
                return
            self._send(DATA, data)
