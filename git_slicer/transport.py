"""Byte streams to a guest agent. Each channel gives a framed Connection and closes cleanly.

Addresses (see docs/transports.md):
  vsock:CID:PORT          AF_VSOCK (QEMU/Kata vhost-vsock); the guest runs `git slicer agent --listen vsock:PORT`
  hvsock:/path/vm.sock:PORT  Firecracker / Cloud Hypervisor hybrid vsock (CONNECT <port> / OK <n>)
  unix:/path              a unix socket the agent listens on
  tcp:HOST:PORT           a TCP port the agent listens on; needs a shared token
  ssh:[user@]host[:port]  the agent over ssh, shipped over the same channel (agentless guests)
  exec:COMMAND            a command prefix that runs its trailing arguments in the guest
                          (`docker exec -i box`, `kubectl exec -i pod --`, `limactl shell vm`, ...)

Socket transports open with an `auth` frame (the agent's --listen side requires it first);
stdio transports (ssh, exec, Slicer exec) send the stdlib-only agent as a length-prefixed zip
and run it with the guest's python3, so the guest needs nothing but python3 and git.
"""

from __future__ import annotations

import errno
import io
import os
import shlex
import socket
import subprocess
import threading
import zipfile
from dataclasses import dataclass, field
from typing import Optional, Protocol

from .errors import AgentFailed, UsageError
from .rundir import private_dir
from .wire.framing import Connection, ProtocolError, RemoteError

CONNECT_TIMEOUT = 10
HANDSHAKE_TIMEOUT = 30
KINDS = ("vsock", "hvsock", "unix", "tcp", "ssh", "exec")


# -- addresses ---------------------------------------------------------------
@dataclass
class Address:
    kind: str
    text: str
    host: str = ""
    port: int = 0
    path: str = ""
    cid: int = 0
    user: str = ""
    command: list = field(default_factory=list)

    @property
    def stdio(self) -> bool:
        return self.kind in ("ssh", "exec")


def _port(text: str, what: str, address: str, low: int = 1, high: int = 65535) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not low <= value <= high:
        raise UsageError("bad %s %r in address %r" % (what, text, address))
    return value


def parse_address(text: str) -> Address:
    """Parse a transport address; a UsageError names what is wrong in one line."""
    kind, sep, rest = (text or "").partition(":")
    if not sep or kind not in KINDS:
        raise UsageError("bad VM address %r (expected one of %s followed by ':')"
                         % (text, ", ".join(KINDS)))
    if kind == "vsock":
        cid, _, port = rest.partition(":")
        return Address(kind, text, cid=_port(cid, "CID", text, 0, 2 ** 32 - 1),
                       port=_port(port, "vsock port", text, 0, 2 ** 32 - 1))
    if kind == "hvsock":
        path, _, port = rest.rpartition(":")
        if not path:
            raise UsageError("bad address %r (expected hvsock:/path/to/vm.sock:PORT)" % text)
        return Address(kind, text, path=os.path.expanduser(path),
                       port=_port(port, "vsock port", text, 0, 2 ** 32 - 1))
    if kind == "unix":
        if not rest:
            raise UsageError("bad address %r (expected unix:/path/to/socket)" % text)
        return Address(kind, text, path=os.path.expanduser(rest))
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not host:
            raise UsageError("bad address %r (expected tcp:HOST:PORT)" % text)
        return Address(kind, text, host=host, port=_port(port, "port", text))
    if kind == "ssh":
        user, _, hostport = rest.rpartition("@")
        host, port = hostport, 0
        if hostport.startswith("["):
            host, _, tail = hostport[1:].partition("]")
            if tail:
                port = _port(tail.lstrip(":"), "port", text)
        elif hostport.count(":") == 1:
            host, _, p = hostport.partition(":")
            port = _port(p, "port", text)
        if not host or host.startswith("-") or user.startswith("-") or any(c.isspace() for c in rest):
            raise UsageError("bad address %r (expected ssh:[user@]host[:port])" % text)
        return Address(kind, text, host=host, port=port, user=user)
    try:
        command = shlex.split(rest)
    except ValueError as exc:
        raise UsageError("bad address %r: %s" % (text, exc)) from None
    if not command:
        raise UsageError("bad address %r (expected exec:COMMAND)" % text)
    return Address(kind, text, command=command)


# -- the agent shipped to guests that do not have it ---------------------------
_BOOT = r'''
import os, shutil, sys, tempfile
if sys.version_info < (3, 9):
    sys.exit("git-slicer: the guest's python3 is %d.%d; the agent needs python3 >= 3.9" % sys.version_info[:2])
r = sys.stdin.buffer
head = r.readline()
if not head.startswith(b"GIT-SLICER-AGENT "):
    sys.exit("git-slicer: bad agent bundle header")
n = int(head.split()[1])
d = tempfile.mkdtemp(prefix="git-slicer-agent-")
try:
    p = os.path.join(d, "agent.zip")
    with open(p, "wb") as f:
        while n > 0:
            b = r.read(min(n, 65536))
            if not b:
                sys.exit("git-slicer: the agent bundle was cut short")
            f.write(b)
            n -= len(b)
    sys.path.insert(0, p)
    for m in [m for m in sys.modules if m == "git_slicer" or m.startswith("git_slicer.")]:
        del sys.modules[m]
    from git_slicer.agent.entry import main
    code = main(["--stdio"])
finally:
    shutil.rmtree(d, ignore_errors=True)
sys.exit(code)
'''
_NEEDS = "the agent needs python3 >= 3.9 and git on PATH"
AGENT_SCRIPT = (
    'command -v python3 >/dev/null 2>&1 || { echo "git-slicer: the guest has no python3 (%s)" >&2; exit 127; }\n'
    'command -v git >/dev/null 2>&1 || { echo "git-slicer: the guest has no git (%s)" >&2; exit 127; }\n'
    'exec python3 -c %s\n' % (_NEEDS, _NEEDS, shlex.quote(_BOOT)))
EXEC_SCRIPT = 'd=$1; shift; case $d in "~"|"~/"*) d="$HOME${d#"~"}";; esac\n' \
              'if [ -n "$d" ]; then cd -- "$d" || exit 126; fi\nexec "$@"\n'
_bundle_cache = []


def agent_bundle() -> bytes:
    """The stdlib-only agent (git_slicer/__init__.py, agent/, wire/) as a zip, built once."""
    if _bundle_cache:
        return _bundle_cache[0]
    package = os.path.dirname(os.path.abspath(__file__))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        names = ["__init__.py"] + ["%s/%s" % (sub, f) for sub in ("agent", "wire")
                                   for f in sorted(os.listdir(os.path.join(package, sub))) if f.endswith(".py")]
        for name in names:
            info = zipfile.ZipInfo("git_slicer/" + name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(os.path.join(package, name), "rb") as fh:
                zf.writestr(info, fh.read())
    _bundle_cache.append(buf.getvalue())
    return _bundle_cache[0]


def bundle_preamble() -> bytes:
    data = agent_bundle()
    return b"GIT-SLICER-AGENT %d\n" % len(data) + data


# -- channels ----------------------------------------------------------------
class Channel(Protocol):
    """A byte stream to one agent, as a session uses it. Every channel implements all of it:
    ProcessChannel and SocketChannel here, qemu's SerialChannel, Slicer's ForwardChannel."""

    conn: Connection            # framed protocol v1, ready for `hello`
    description: str            # what it connects to, for messages

    def handshake_done(self) -> None:
        """The agent answered `hello`: drop the handshake's timeouts."""

    def abort(self) -> None:
        """Cut the connection at once (a deadline expired): blocked reads and writes fail."""

    def hang_up(self) -> None:
        """After a failure mid-stream: stop reading, so a writer still streaming fails at once."""

    def stderr_tail(self, limit: int = 2000) -> str:
        """The last words the agent wrote outside the protocol ("" when the channel has none)."""

    def diagnose(self) -> Optional[str]:
        """Why the agent did not answer, in one line, or None when unknown."""

    def close(self) -> None:
        """Release the stream (and the process behind it)."""


class ProcessChannel:
    """An agent reached through a child process's stdin/stdout.

    `ship_agent` sends the agent bundle first (the child runs AGENT_SCRIPT in the guest);
    `explain(returncode, stderr)` turns a transport's failure into one line.
    """

    def __init__(self, argv, env=None, description: str = "agent", max_json: int = None,
                 ship_agent: bool = False, handshake_timeout: float = None, explain=None,
                 own_group: bool = False):
        self.description = description
        self.explain = explain
        self.own_group = own_group     # kill the whole group: `sh -c` leaves children holding the pipes
        self.shipped = ship_agent
        self.timed_out = False
        self.handshake_timeout = handshake_timeout
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, env=env, bufsize=0, start_new_session=own_group)
        except OSError as exc:
            raise AgentFailed("cannot start %s: %s" % (description, exc)) from None
        self._stderr = StderrTail(self.proc.stderr)
        kwargs = {"max_json": max_json} if max_json else {}
        writer = _Buffered(self.proc.stdin)
        self.conn = Connection(self.proc.stdout, writer, **kwargs)
        self._timer = None
        if handshake_timeout:
            self._timer = threading.Timer(handshake_timeout, self._expire)
            self._timer.daemon = True
            self._timer.start()
        if ship_agent:
            writer.write(bundle_preamble())     # flushed together with the hello

    def _kill(self) -> None:
        try:
            if self.own_group:
                os.killpg(self.proc.pid, 9)
            else:
                self.proc.kill()
        except OSError:
            pass

    def _expire(self) -> None:
        self.timed_out = True
        self._kill()

    def handshake_done(self) -> None:
        if self._timer:
            self._timer.cancel()

    def abort(self) -> None:
        self._kill()

    def hang_up(self) -> None:
        try:
            self.proc.stdout.close()    # a writer still streaming gets EPIPE at once
        except OSError:
            pass

    def stderr_tail(self, limit: int = 2000) -> str:
        return self._stderr.text()[-limit:]

    def diagnose(self):
        """Why the agent did not answer, in one line (or None when unknown)."""
        if self.timed_out:
            return "timed out after %gs waiting for the agent (%s)" % (self.handshake_timeout, self.description)
        try:
            code = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            code = None
        text = self.stderr_tail(8000)
        for line in text.splitlines():
            if line.startswith("git-slicer: "):
                return line[len("git-slicer: "):].strip()
        if self.explain:
            reason = self.explain(code, text)
            if reason:
                return reason
        return None

    def close(self, timeout: float = 10) -> None:
        self.handshake_done()
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            self.proc.wait()
        self.proc.stdout.close()
        self._stderr.close()


class StderrTail:
    """Drains a child's stderr in a thread, keeping only the last CAP bytes: the VM decides how
    much it writes, so neither memory nor the host's temp space may grow with it."""

    CAP = 64 * 1024

    def __init__(self, pipe):
        self._pipe = pipe
        self._data = bytearray()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        fd = self._pipe.fileno()
        while True:
            try:
                block = os.read(fd, 65536)
            except OSError:
                return
            if not block:
                return
            with self._lock:
                self._data += block
                if len(self._data) > self.CAP:
                    del self._data[:len(self._data) - self.CAP]

    def text(self) -> str:
        self._thread.join(0.2)          # let a process that just exited finish its last words
        with self._lock:
            return bytes(self._data).decode("utf-8", "replace").strip()

    def close(self) -> None:
        self._thread.join(1)
        try:
            self._pipe.close()
        except OSError:
            pass


class SocketChannel:
    """An agent behind a connected stream socket (vsock, hybrid vsock, unix, tcp)."""

    def __init__(self, sock, description: str, token: str = None, max_json: int = None):
        self.sock = sock
        self.description = description
        self.shipped = False
        kwargs = {"max_json": max_json} if max_json else {}
        self.conn = Connection(sock.makefile("rb"), sock.makefile("wb", buffering=1024 * 1024), **kwargs)
        self._authenticate(token)

    def _authenticate(self, token) -> None:
        try:
            self.conn.send({"op": "auth", "token": token or None})
            self.conn.recv_reply()
        except RemoteError as exc:
            self.close()
            if exc.code == "auth-failed":
                raise AgentFailed("authentication failed at %s: %s" % (self.description, exc)) from None
            raise AgentFailed("%s: %s" % (self.description, exc)) from None
        except socket.timeout:
            self.close()
            raise AgentFailed("timed out waiting for the agent at %s" % self.description) from None
        except (ProtocolError, OSError) as exc:
            self.close()
            raise AgentFailed("no git-slicer agent answered at %s (%s)" % (self.description, why(exc))) from None

    def handshake_done(self) -> None:
        self.sock.settimeout(None)

    def abort(self) -> None:
        """Cut the connection at once (a deadline expired): blocked reads and writes fail."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def hang_up(self) -> None:
        pass                            # close() shuts the socket down in both directions

    def stderr_tail(self, limit: int = 2000) -> str:
        return ""                       # a socket carries only the protocol

    def diagnose(self):
        return None

    def close(self, timeout: float = 10) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def why(exc) -> str:
    """An OSError in a few words."""
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, FileNotFoundError):
        return "no such socket"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _connect(family, target, description: str, timeout: float):
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except (OSError, AttributeError) as exc:
        raise AgentFailed("cannot open a socket for %s: %s" % (description, why(exc))) from None
    sock.settimeout(timeout)
    try:
        sock.connect(target)
    except socket.timeout:
        sock.close()
        raise AgentFailed("timed out after %gs connecting to %s" % (timeout, description)) from None
    except OSError as exc:
        sock.close()
        if isinstance(exc, ConnectionRefusedError):
            raise AgentFailed("connection refused by %s (is the agent listening?)" % description) from None
        if isinstance(exc, FileNotFoundError):
            raise AgentFailed("no socket at %s (is the VM or agent running?)" % description) from None
        if exc.errno == errno.ENODEV:
            raise AgentFailed("no VM with that CID (%s)" % description) from None
        if exc.errno in (errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETUNREACH):
            raise AgentFailed("nothing listens at %s (%s)" % (description, why(exc))) from None
        raise AgentFailed("cannot connect to %s: %s" % (description, why(exc))) from None
    return sock


def hybrid_vsock_connect(path: str, port: int, timeout: float):
    """Firecracker / Cloud Hypervisor: CONNECT <port>\\n on the VMM's socket, then OK <n>\\n."""
    description = "vsock port %d behind %s" % (port, path)
    sock = _connect(socket.AF_UNIX, path, "the VM socket %s" % path, timeout)
    try:
        sock.sendall(b"CONNECT %d\n" % port)
        line = b""
        while not line.endswith(b"\n") and len(line) < 64:
            byte = sock.recv(1)     # one byte at a time: nothing after the newline is ours to read
            if not byte:
                break
            line += byte
    except socket.timeout:
        sock.close()
        raise AgentFailed("timed out after %gs waiting for %s to accept" % (timeout, description)) from None
    except OSError as exc:
        sock.close()
        raise AgentFailed("nothing listens on %s (%s)" % (description, why(exc))) from None
    if not line:
        sock.close()
        raise AgentFailed("nothing listens on %s: the hypervisor closed the connection" % description,
                          hint="start `git slicer agent --listen vsock:%d` in the guest" % port)
    if not line.startswith(b"OK ") or not line.endswith(b"\n"):
        sock.close()
        raise AgentFailed("unexpected answer from the hybrid vsock socket %s: %r" % (path, line[:64]))
    return sock, description


def vsock_connect(cid: int, port: int, timeout: float):
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        raise AgentFailed("AF_VSOCK is not available on this host (needs Linux with vhost-vsock)")
    return _connect(family, (cid, port), "vsock CID %d port %d" % (cid, port), timeout)


def ssh_reuse_options(seconds: int) -> list:
    """ssh options that keep one connection per host open for `seconds` after its last command
    (ControlMaster), so the next command skips the handshake; [] when off. The sockets live in
    /tmp/git-slicer-ssh-UID (a socket path must stay short: ssh adds 58 bytes to the directory),
    used only when it is a real directory of ours with mode 0700."""
    if not seconds:
        return []
    directory = private_dir("ssh")
    if directory is None:
        return []                   # made by someone else: never share a socket directory
    return ["-o", "ControlMaster=auto", "-o", "ControlPath=%s/%%C" % directory, "-o", "ControlPersist=%d" % seconds]


def ssh_argv(ssh_command, address: Address, remote: str, connect_timeout: float = None,
             tty: bool = False, batch: bool = True) -> list:
    argv = list(ssh_command) + ["-e", "none", "-tt" if tty else "-T"]
    if batch:
        argv += ["-o", "BatchMode=yes"]
    if connect_timeout:
        argv += ["-o", "ConnectTimeout=%d" % max(1, int(connect_timeout))]
    if address.port:
        argv += ["-p", str(address.port)]
    if address.user:
        argv += ["-l", address.user]
    return argv + ["--", address.host, remote]


def explain_ssh(address: Address):
    where = address.host + (":%d" % address.port if address.port else "")

    def explain(code, stderr: str):
        lines = [l for l in stderr.splitlines() if l.strip() and not l.startswith("Warning: Permanently added")]
        last = lines[-1].strip() if lines else ""
        low = stderr.lower()
        if code == 255 or code is None:
            if "permission denied" in low or "too many authentication failures" in low:
                return "ssh authentication failed for %s (%s)" % (where, last)
            if "connection refused" in low:
                return "ssh: connection refused by %s" % where
            if "timed out" in low:
                return "ssh: timed out connecting to %s" % where
            if "host key verification failed" in low:
                return "ssh: host key verification failed for %s (check ~/.ssh/known_hosts)" % where
            if "could not resolve" in low:
                return "ssh: cannot resolve host %s" % address.host
            if last:
                return "ssh to %s failed: %s" % (where, last)
        if code == 127:
            return "the guest could not run the agent: %s" % (last or "command not found")
        return None
    return explain


def explain_exec(address: Address):
    def explain(code, stderr: str):
        lines = [l for l in stderr.splitlines() if l.strip()]
        last = lines[-1].strip() if lines else ""
        if code is not None and code != 0:
            return "%s exited with status %d%s" % (address.command[0], code, (": " + last) if last else "")
        return None
    return explain


def open_channel(address: Address, *, description: str, token: str = None, ssh_command=("ssh",),
                 connect_timeout: float = CONNECT_TIMEOUT, handshake_timeout: float = HANDSHAKE_TIMEOUT):
    """Connect to the agent at `address`; the channel's .conn is ready for `hello`."""
    if address.kind == "ssh":
        remote = "sh -c %s sh" % shlex.quote(AGENT_SCRIPT)
        return ProcessChannel(ssh_argv(ssh_command, address, remote, connect_timeout), description=description,
                              ship_agent=True, handshake_timeout=connect_timeout + handshake_timeout,
                              explain=explain_ssh(address), own_group=True)
    if address.kind == "exec":
        return ProcessChannel(address.command + ["sh", "-c", AGENT_SCRIPT, "sh"], description=description,
                              ship_agent=True, handshake_timeout=connect_timeout + handshake_timeout,
                              explain=explain_exec(address), own_group=True)
    if address.kind == "tcp" and not token:
        raise UsageError("%s: tcp addresses need a token" % description,
                         hint="set slicer.<vm>.token or slicer.<vm>.tokenFile to the agent's token")
    if address.kind == "vsock":
        sock, where = vsock_connect(address.cid, address.port, connect_timeout), address.text
    elif address.kind == "hvsock":
        sock, where = hybrid_vsock_connect(address.path, address.port, connect_timeout)
    elif address.kind == "unix":
        sock, where = _connect(socket.AF_UNIX, address.path, address.text, connect_timeout), address.text
    else:
        infos = _resolve(address, connect_timeout)
        sock, where = _connect(infos[0], infos[1], address.text, connect_timeout), address.text
    sock.settimeout(handshake_timeout)
    return SocketChannel(sock, "%s (%s)" % (description, where), token=token)


def _resolve(address: Address, timeout: float):
    try:
        family, _, _, _, target = socket.getaddrinfo(address.host, address.port, 0, socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise AgentFailed("cannot resolve %s: %s" % (address.host, exc.strerror)) from None
    return family, target


def guest_command(address: Address, argv, cwd: str = "", ssh_command=("ssh",), interactive: bool = False,
                  connect_timeout: float = CONNECT_TIMEOUT) -> list:
    """The host argv that runs `argv` in the guest at `cwd` (ssh and exec addresses)."""
    inner = ["sh", "-c", EXEC_SCRIPT, "sh", cwd or ""] + list(argv)
    if address.kind == "ssh":
        return ssh_argv(ssh_command, address, shlex.join(inner), connect_timeout, tty=interactive, batch=False)
    if address.kind == "exec":
        return address.command + inner
    raise UsageError("cannot run commands through a %s: address; `git slicer exec` needs an ssh: or exec: "
                     "address (or a provider with exec)" % address.kind)


class _Buffered:
    """A write buffer over an unbuffered pipe: frames are small, pipes want big writes."""

    def __init__(self, raw, size: int = 1024 * 1024):
        self._w = io.BufferedWriter(raw, buffer_size=size)

    def write(self, data) -> int:
        return self._w.write(data)

    def flush(self) -> None:
        self._w.flush()
