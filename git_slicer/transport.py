"""Byte streams to a guest agent. Each channel gives a framed Connection and closes cleanly.

Today: a process whose stdin/stdout reach the agent (a sandbox, `ssh`, `docker exec -i`, ...).
"""

from __future__ import annotations

import subprocess
import tempfile

from .errors import AgentFailed
from .wire.framing import Connection


class ProcessChannel:
    """An agent reached through a child process's stdin/stdout."""

    def __init__(self, argv, env=None, description: str = "agent", max_json: int = None):
        self.description = description
        self._stderr = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._stderr, env=env, bufsize=0, start_new_session=False)
        except OSError as exc:
            raise AgentFailed("cannot start %s: %s" % (description, exc)) from None
        kwargs = {"max_json": max_json} if max_json else {}
        self.conn = Connection(self.proc.stdout, _Buffered(self.proc.stdin), **kwargs)

    def stderr_tail(self, limit: int = 2000) -> str:
        self._stderr.seek(0)
        text = self._stderr.read().decode("utf-8", "replace").strip()
        return text[-limit:]

    def close(self, timeout: float = 10) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self._stderr.close()


class _Buffered:
    """A write buffer over an unbuffered pipe: frames are small, pipes want big writes."""

    def __init__(self, raw, size: int = 1024 * 1024):
        import io
        self._w = io.BufferedWriter(raw, buffer_size=size)

    def write(self, data) -> int:
        return self._w.write(data)

    def flush(self) -> None:
        self._w.flush()
