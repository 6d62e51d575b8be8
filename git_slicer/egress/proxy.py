"""The host-side filtering proxy one VM reaches the network through.

It listens on a unix socket in a fresh 0700 directory (no other user can reach it; the sandbox
gets the socket itself bind-mounted) and speaks the two forms HTTP clients use through a proxy:

    CONNECT host:port HTTP/1.1          a TLS tunnel (https, git over https, pip, npm, APIs)
    GET http://host[:port]/path ...     plain HTTP, forwarded with `Connection: close`
    GET /path + Host: host[:port]       the same, from a client that thinks it talks to the server

The target is checked against the VM's allowlist (re-read on every connection, so `vm allow`
and `vm deny` apply at once) before any name is resolved; names are resolved here, on the host.
A Host header that names a different target than the request line, credentials in a URL,
folded or duplicate Host headers, and non-canonical IP spellings are refused. Every connection
is logged (allowed, refused or failed; host, port, bytes each way).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass

from ..errors import SlicerError
from ..wire.relay import relay
from .allowlist import BadHost, find_rule, parse_rule, parse_target

MAX_HEAD = 64 * 1024          # a request head larger than this is refused
HEAD_TIMEOUT = 30             # seconds a client may take to send its request head
CONNECT_TIMEOUT = 10          # seconds to reach an allowed host
MAX_CONNECTIONS = 64          # open connections per proxy
POLL = 0.5                    # how often the accept loop asks whether the VM still exists
_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate",
        "te", "trailer", "upgrade"}


class Refused(Exception):
    def __init__(self, status: int, reason: str, method: str = "", host: str = "", port: int = 0,
                 verdict: str = "refused"):
        super().__init__(reason)
        self.status, self.reason, self.verdict = status, reason, verdict
        self.method, self.host, self.port = method, host, port


@dataclass
class Request:
    method: str
    host: str
    port: int
    head: bytes = b""       # what to send upstream first (plain HTTP only)

    @property
    def tunnel(self) -> bool:
        return self.method == "CONNECT"


def parse_request(head: bytes) -> Request:
    """Parse and check a request head (without the final blank line); Refused says why not."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise Refused(400, "request head is not ASCII") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[0].isupper():
        raise Refused(400, "bad request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise Refused(400, "unsupported HTTP version", method)
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if line[0] in " \t" or not sep or not name or not all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in name):
            raise Refused(400, "bad header line", method)
        headers.append((name, value.strip()))
    hosts = [value for name, value in headers if name.lower() == "host"]
    if len(hosts) > 1:
        raise Refused(400, "several Host headers", method)
    try:
        if method == "CONNECT":
            host, port = parse_target(target)
            if hosts and parse_target(hosts[0], port) != (host, port):
                raise Refused(403, "Host header %r does not match the CONNECT target" % hosts[0], method, host, port)
            return Request(method, host, port)
        if target.startswith("/"):
            if not hosts:
                raise Refused(400, "no Host header", method)
            host, port = parse_target(hosts[0], 80)
            path = target
        else:
            if target[:7].lower() != "http://":
                raise Refused(400, "only http:// URLs can be forwarded (https goes through CONNECT)", method)
            rest = target[7:]
            cut = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0] or [len(rest)])
            authority, path = rest[:cut], rest[cut:] or "/"
            if "@" in authority or "#" in target:
                raise Refused(400, "credentials or fragments in the URL", method)
            host, port = parse_target(authority, 80)
            if path.startswith("?"):
                path = "/" + path
            if hosts and parse_target(hosts[0], 80) != (host, port):
                raise Refused(403, "Host header %r does not match the URL" % hosts[0], method, host, port)
    except BadHost as exc:
        raise Refused(400, str(exc), method) from None
    out = ["%s %s %s" % (method, path, version)]
    out += ["%s: %s" % (name, value) for name, value in headers
            if name.lower() not in _HOP and name.lower() != "host"]
    out += ["Host: %s" % (hosts[0] if hosts else target[7:7 + len(authority)]), "Connection: close", "", ""]
    return Request(method, host, port, "\r\n".join(out).encode("ascii"))


def read_head(sock):
    """(head without the blank line, bytes already read past it)."""
    data = b""
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            return data[:end], data[end + 4:]
        if len(data) > MAX_HEAD:
            raise Refused(431, "request head larger than %d bytes" % MAX_HEAD)
        block = sock.recv(65536)
        if not block:
            raise Refused(400, "connection closed before the request head ended")
        data += block


def open_upstream(host: str, port: int):
    """A connected socket to host:port, the name resolved here; (socket, address)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise Refused(502, "cannot resolve %s: %s" % (host, exc.strerror or exc), verdict="failed") from None
    error = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(address)
            sock.settimeout(None)
            return sock, address[0]
        except OSError as exc:
            error = exc
            sock.close()
    raise Refused(502, "cannot connect to %s:%d: %s" % (host, port, getattr(error, "strerror", None) or error),
                  verdict="failed")


class EgressProxy:
    """One VM's proxy, for as long as a command runs in it (a context manager).

    `rules()` returns the VM's current allowlist (texts), or None once the VM is gone: then the
    proxy refuses everything, closes its open tunnels and stops listening.
    """

    def __init__(self, vm: str, rules, log):
        self.vm, self.rules, self.log = vm, rules, log
        self.dir = ""
        self.path = ""
        self._server = None
        self._open = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def start(self) -> str:
        # 0700: only this user. A unix socket path has at most 107 bytes: a long TMPDIR falls back to /tmp.
        base = None if len(tempfile.gettempdir()) < 64 else "/tmp"
        self.dir = tempfile.mkdtemp(prefix="git-slicer-egress-", dir=base)
        self.path = os.path.join(self.dir, "proxy.sock")
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._server.bind(self.path)
            os.chmod(self.path, 0o600)
            self._server.listen(MAX_CONNECTIONS)
        except OSError as exc:
            self.stop()
            raise SlicerError("cannot start the egress proxy of VM %s: %s" % (self.vm, exc.strerror or exc)) from None
        self._server.settimeout(POLL)
        threading.Thread(target=self._accept_loop, name="egress-%s" % self.vm, daemon=True).start()
        return self.path

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        with self._lock:
            doomed = list(self._open)
        for sock in doomed:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._server:
            self._server.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._server.accept()
            except socket.timeout:
                if self._current_rules() is None:
                    self.stop()             # `vm rm`: the VM is gone, and so is its way out
                continue
            except OSError:
                return
            with self._lock:
                busy = len(self._open) >= 2 * MAX_CONNECTIONS   # each connection holds two sockets
            if busy:
                self._refuse(client, Refused(503, "too many open connections"))
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _current_rules(self):
        texts = self.rules()
        if texts is None:
            return None
        rules = []
        for text in texts:
            try:
                rules.append(parse_rule(text))
            except BadHost:
                continue
        return rules

    def _track(self, sock, add: bool = True) -> None:
        with self._lock:
            (self._open.add if add else self._open.discard)(sock)

    def _serve(self, client) -> None:
        self._track(client)
        upstream = None
        request = None
        try:
            client.settimeout(HEAD_TIMEOUT)
            head, rest = read_head(client)
            request = parse_request(head)
            rules = self._current_rules()
            if rules is None:
                raise Refused(403, "VM %s was removed" % self.vm, request.method, request.host, request.port)
            if find_rule(rules, request.host, request.port) is None:
                raise Refused(403, "%s:%d is not on the allowlist of VM %s (git slicer vm allow %s %s)" % (
                    request.host, request.port, self.vm, self.vm, _rule_hint(request)),
                    request.method, request.host, request.port)
            try:
                upstream, address = open_upstream(request.host, request.port)
            except Refused as exc:
                exc.method, exc.host, exc.port = request.method, request.host, request.port
                raise
            self._track(upstream)
            client.settimeout(None)
            if request.tunnel:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                upstream.sendall(request.head)
            up, down = self._relay(client, upstream, rest)
            up += len(request.head)
            self.log.write(vm=self.vm, verdict="allowed", method=request.method, host=request.host,
                           port=request.port, address=address, up=up, down=down)
        except Refused as exc:
            self._refuse(client, exc)
        except OSError as exc:
            if request is not None:
                self.log.write(vm=self.vm, verdict="failed", method=request.method, host=request.host,
                               port=request.port, reason=str(exc))
        finally:
            for sock in (client, upstream):
                if sock is not None:
                    self._track(sock, False)
                    sock.close()

    def _refuse(self, client, exc: Refused) -> None:
        self.log.write(vm=self.vm, verdict=exc.verdict, method=exc.method, host=exc.host, port=exc.port,
                       reason=exc.reason)
        body = ("git-slicer: %s\n" % exc.reason).encode("ascii", "replace")
        try:
            client.sendall(b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                           b"Connection: close\r\n\r\n%s" % (exc.status, _PHRASES.get(exc.status, b"Error"),
                                                              len(body), body))
        except OSError:
            pass
        client.close()

    def _relay(self, client, upstream, rest: bytes):
        """Copy both ways until both sides are done; bytes (client->host, host->client)."""
        if rest:
            upstream.sendall(rest)
        sent, received = relay(client, upstream)
        return len(rest) + sent, received


def _rule_hint(request: Request) -> str:
    host = "[%s]" % request.host if ":" in request.host else request.host
    return host if request.port in (80, 443) else "%s:%d" % (host, request.port)


_PHRASES = {400: b"Bad Request", 403: b"Forbidden", 431: b"Request Header Fields Too Large",
            502: b"Bad Gateway", 503: b"Service Unavailable"}
