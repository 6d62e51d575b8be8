"""The host's side of protocol v1: one long-lived connection to an agent per operation."""

from __future__ import annotations

from . import __version__
from .errors import AgentFailed, WouldLoseWork
from .wire.framing import AGENT_NAME, PROTOCOL_VERSION, ProtocolError, RemoteError
from .wire.paths import display


class AgentSession:
    def __init__(self, channel, vm: str):
        self.channel = channel
        self.conn = channel.conn
        self.vm = vm
        self.info = {}
        self.vm_id = ""          # the identity the VM confirmed at hello (see target.open_session)
        from . import report
        self._bar = report.attach(self.conn, "VM %s" % vm)   # tqdm on a TTY for long transfers
        self._timer = None

    def set_deadline(self, seconds: int) -> None:
        """Cut the connection if the whole operation takes longer than `seconds`
        (slicer.limit.seconds): a VM that stalls or trickles cannot hold the host forever."""
        import threading

        def expire():
            self.conn.closed_reason = ("VM %s did not finish within slicer.limit.seconds (%d s); "
                                       "the operation was stopped" % (self.vm, seconds))
            stop = getattr(self.channel, "abort", None)
            if stop is not None:
                stop()
            elif getattr(self.channel, "proc", None) is not None:
                self.channel.proc.kill()
        if seconds and seconds > 0:
            self._timer = threading.Timer(seconds, expire)
            self._timer.daemon = True
            self._timer.start()

    # -- plumbing --------------------------------------------------------------
    def _fail(self, exc) -> AgentFailed:
        tail = self.channel.stderr_tail() if hasattr(self.channel, "stderr_tail") else ""
        if self.conn.closed_reason:
            return AgentFailed(self.conn.closed_reason)
        if isinstance(exc, RemoteError):
            if exc.code == "vm-changed":
                return WouldLoseWork("VM %s: %s" % (self.vm, exc))
            return AgentFailed("VM %s: %s" % (self.vm, exc))
        message = "lost the agent in VM %s: %s" % (self.vm, exc)
        if tail:
            message += " (agent said: %s)" % display(tail.splitlines()[-1][:300])
        return AgentFailed(message)

    def request(self, message: dict) -> dict:
        try:
            self.conn.send(message)
            return self.conn.recv_reply()
        except (ProtocolError, RemoteError, OSError) as exc:
            raise self._fail(exc) from None

    def reply(self) -> dict:
        try:
            return self.conn.recv_reply()
        except (ProtocolError, RemoteError, OSError) as exc:
            raise self._fail(exc) from None

    # -- requests ------------------------------------------------------------
    def hello(self, vm_id: str = None) -> dict:
        """`vm_id`: the identity the VM should keep if it has none yet (it answers with its own)."""
        message = {"op": "hello", "protocol": PROTOCOL_VERSION, "client": "git-slicer/" + __version__}
        if vm_id:
            message["vm_id"] = vm_id
        try:
            self.conn.send(message)
            reply = self.conn.recv_reply()
        except RemoteError as exc:
            raise AgentFailed("VM %s: incompatible agent: %s" % (self.vm, exc)) from None
        except (ProtocolError, OSError) as exc:
            raise self._fail(ProtocolError("no git-slicer agent answered (%s)" % exc)) from None
        if reply.get("agent") != AGENT_NAME or reply.get("protocol") != PROTOCOL_VERSION:
            raise AgentFailed("VM %s: not a git-slicer agent speaking protocol %d" % (self.vm, PROTOCOL_VERSION))
        self.info = reply
        return reply

    def state(self, path: str, base: str = None, applied: str = None) -> dict:
        """The VM repository's branch, HEAD and overlay (and commits ahead of/behind `base`; and
        with `applied`, a push id, that push's record if it is the last one the VM completed)."""
        message = {"op": "state", "path": path}
        if base:
            message["base"] = base
        if applied:
            message["applied"] = applied
        return self.request(message)

    def close(self, polite: bool = True) -> None:
        if polite:      # after a failure the stream may be mid-way: just hang up
            try:
                self.conn.send({"op": "bye"})
                self.conn.recv_reply()
            except (ProtocolError, RemoteError, OSError):
                pass
        elif getattr(self.channel, "proc", None) is not None:
            try:
                self.channel.proc.stdout.close()    # a writer still streaming gets EPIPE at once
            except OSError:
                pass
        self._bar.close()
        self.channel.close()
        if self._timer is not None:
            self._timer.cancel()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(polite=exc_type is None)
