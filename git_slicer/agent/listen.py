"""`git slicer agent --listen ADDR`: serve protocol v1 on a socket inside the guest.

    vsock:PORT       AF_VSOCK on any CID (QEMU/Kata vhost-vsock, Firecracker/Cloud Hypervisor hybrid vsock)
    unix:/path       a unix socket, mode 0600 (file permissions are the access control)
    tcp:HOST:PORT    TCP; refuses to start without a token
    fd:N             a listening socket the host made and handed down (the local sandbox's warm
                     agent: the socket's path lives in a host directory the VM cannot see)

With `--idle SECONDS` the agent ends once no connection has been open for that long, and also
when its VM's home directory is deleted (`vm rm`); SIGTERM stops new connections and ends the
agent when the open ones are done.

Every connection must open with {"op": "auth", "token": ...}; when the agent has a token, it is
compared in constant time and a wrong or missing one ends the connection. Stdlib only.
"""

from __future__ import annotations

import functools
import hmac
import os
import signal
import socket
import stat
import sys
import threading
import time

from ..wire.framing import DEFAULT_MAX_JSON, Connection, ProtocolError, error_reply
from . import memo
from .server import Agent

HANDSHAKE_SECONDS = 30
AUTH_FRAME_BYTES = 4096
DRAIN_SECONDS = 60


class ListenError(Exception):
    pass


def parse_listen(text: str):
    """(family, bind target, display) for a --listen address."""
    kind, _, rest = (text or "").partition(":")
    if kind == "vsock":
        family = getattr(socket, "AF_VSOCK", None)
        if family is None:
            raise ListenError("AF_VSOCK is not available in this python/kernel")
        try:
            port = int(rest)
        except ValueError:
            raise ListenError("bad vsock port %r (expected vsock:PORT)" % rest) from None
        return family, (socket.VMADDR_CID_ANY, port), "vsock"
    if kind == "unix" and rest:
        return socket.AF_UNIX, os.path.expanduser(rest), "unix"
    if kind == "fd":
        try:
            return socket.AF_UNIX, int(rest), "fd"
        except ValueError:
            raise ListenError("bad descriptor %r (expected fd:N)" % rest) from None
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            number = int(port)
        except ValueError:
            raise ListenError("bad port %r (expected tcp:HOST:PORT)" % port) from None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return family, (host or "127.0.0.1", number), "tcp"
    raise ListenError("bad --listen address %r (expected vsock:PORT, unix:/path, tcp:HOST:PORT or fd:N)" % text)


def read_token(token_file: str = None) -> str:
    if token_file:
        try:
            with open(os.path.expanduser(token_file), encoding="utf-8") as fh:
                token = fh.read().strip()
        except OSError as exc:
            raise ListenError("cannot read token file %s: %s" % (token_file, exc.strerror)) from None
        if not token:
            raise ListenError("token file %s is empty" % token_file)
        return token
    return os.environ.get("GIT_SLICER_TOKEN", "").strip()


def bind(address: str, token: str):
    family, target, kind = parse_listen(address)
    if kind == "fd":
        try:
            sock = socket.socket(fileno=target)
        except OSError as exc:
            raise ListenError("no listening socket on descriptor %d: %s" % (target, exc.strerror or exc)) from None
        return sock, kind, target
    if kind == "tcp" and not token:
        raise ListenError("--listen tcp: needs a token (--token-file FILE or GIT_SLICER_TOKEN)")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if kind == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if kind == "unix":
            try:
                if stat.S_ISSOCK(os.lstat(target).st_mode):
                    os.unlink(target)       # a stale socket from an earlier agent
            except FileNotFoundError:
                pass
            old = os.umask(0o177)
            try:
                sock.bind(target)
            finally:
                os.umask(old)
        else:
            sock.bind(target)
        sock.listen(16)
    except OSError as exc:
        sock.close()
        raise ListenError("cannot listen on %s: %s" % (address, exc.strerror or exc)) from None
    return sock, kind, target


def describe(sock, kind: str, target) -> str:
    if kind == "tcp":
        host, port = sock.getsockname()[:2]
        return "tcp:%s:%d" % (host, port)
    if kind == "vsock":
        return "vsock:%d" % sock.getsockname()[1]
    if kind == "fd":
        return "fd:%d" % target
    return "unix:" + target


def handle(sock, token: str, agent=Agent) -> None:
    sock.settimeout(HANDSHAKE_SECONDS)
    conn = Connection(sock.makefile("rb"), sock.makefile("wb", buffering=1024 * 1024), max_json=AUTH_FRAME_BYTES)
    try:
        first = conn.recv()
        offered = first.get("token")
        if first.get("op") != "auth":
            conn.send(error_reply("auth-failed", "the agent expects an auth request first"))
            return
        if token and not (isinstance(offered, str)
                          and hmac.compare_digest(offered.encode("utf-8"), token.encode("utf-8"))):
            conn.send(error_reply("auth-failed", "wrong or missing token" if offered else
                                  "this agent requires a token"))
            return
        conn.send({"ok": True})
        conn.max_json = DEFAULT_MAX_JSON
        sock.settimeout(None)
        agent(conn).serve()
    except (ProtocolError, OSError, ValueError) as exc:
        sys.stderr.write("git-slicer agent: connection ended: %s\n" % exc)
    finally:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


class Connections:
    """How many connections are open and when the last one ended, for the idle exit."""

    def __init__(self):
        self.lock = threading.Lock()
        self.open = 0
        self.idle_since = time.monotonic()
        self.done = threading.Condition(self.lock)

    def run(self, handler, conn, token) -> None:
        try:
            handler(conn, token)
        finally:
            with self.lock:
                self.open -= 1
                self.idle_since = time.monotonic()
                self.done.notify_all()

    def start(self, handler, conn, token) -> None:
        with self.lock:
            self.open += 1
        threading.Thread(target=self.run, args=(handler, conn, token), daemon=True).start()

    def idle_for(self) -> float:
        with self.lock:
            return 0.0 if self.open else time.monotonic() - self.idle_since

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        with self.lock:
            while self.open and time.monotonic() < deadline:
                self.done.wait(deadline - time.monotonic())


def home_deleted() -> bool:
    """The VM's home was deleted under the agent (its VM was removed)."""
    try:
        return os.stat(os.path.expanduser("~")).st_nlink == 0
    except OSError:
        return True


def serve(address: str, token_file: str = None, once: bool = False, idle: float = 0, agent=Agent) -> int:
    try:
        token = read_token(token_file)
        listener, kind, target = bind(address, token)
    except ListenError as exc:
        sys.stderr.write("git-slicer agent: %s\n" % exc)
        return 2
    handler = functools.partial(handle, agent=agent)
    if not once:
        memo.enable()                   # a warm agent: it remembers what its scans found
    stopping = threading.Event()

    def stop(signum, frame):
        stopping.set()
    signal.signal(signal.SIGTERM, stop)
    sys.stderr.write("git-slicer agent: listening on %s\n" % describe(listener, kind, target))
    sys.stderr.flush()
    connections = Connections()
    listener.settimeout(1.0)            # wake up to look at SIGTERM, the idle time and the home
    try:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except (InterruptedError, socket.timeout):
                if (idle and connections.idle_for() >= idle) or (kind == "fd" and home_deleted()):
                    break
                continue
            conn.settimeout(None)
            if once:
                handler(conn, token)
                return 0
            connections.start(handler, conn, token)
    except KeyboardInterrupt:
        return 130
    finally:
        listener.close()                # later connections are refused: the host starts a new agent
        if kind == "unix":
            try:
                os.unlink(target)
            except OSError:
                pass
    connections.drain(DRAIN_SECONDS)    # an operation in flight finishes before the agent ends
    return 0
