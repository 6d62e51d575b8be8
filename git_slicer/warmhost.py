"""The warm host process: one per user and code stamp, with the CLI imported, forking a child per
command that `handoff.py` hands it. See handoff.py for why.

    python -c 'from git_slicer.warmhost import main; main()' SOCKET IDLE

Started detached by a command that ran in its own process. It takes SOCKET.lock (flock; held: one
already runs, leave), binds SOCKET (0600, in the user's 0700 directory) and serves until IDLE
seconds pass with no command, the socket is removed or replaced, or a command's configuration
says `slicer.hostIdle=0`.

Per connection (peer uid checked): the client sends a 4-byte length with its descriptors 0-2
attached, then the request (cwd, umask, niceness, argv, environment: `handoff.encode_request`). The process
forks; the child takes them all and runs the CLI's `main`; the parent answers `pid N`, relays
`signal S` lines to the child (SIGINT and SIGQUIT to its process group, as a terminal would),
kills the child when the client vanishes (as if the command had been killed), and after reaping
answers `exit CODE` or `signal S`. The process never runs threads, so forking it is safe.
"""

import fcntl
import gc
import importlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

from .handoff import decode_request, peer_uid

REQUEST_LIMIT = 4 * 1024 * 1024     # argv and environment
REQUEST_TIMEOUT = 5.0
CHECK_EVERY = 5.0                   # seconds between checks that the socket is still ours
# What the served commands import on use (the CLI defers them to keep a cold start cheap); a
# child that had to import them would pay most of what the host process is there to save.
PRELOAD = ("ctypes", "cli", "push", "pull", "status", "review", "fanout", "config", "links", "target", "repo",
           "report", "ignore", "sparse", "wire.paths", "providers.local", "providers.qemu",
           "providers.slicer", "providers.address", "pathspec", "pygit2")


def main() -> None:
    path, idle = sys.argv[1], int(sys.argv[2])
    lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return                                   # another host process serves this stamp
    os.ftruncate(lock, 0)
    os.write(lock, b"%d\n" % os.getpid())       # who serves: `git slicer` tests end it by this
    for name in PRELOAD:
        try:
            importlib.import_module(name if name in ("ctypes", "pathspec", "pygit2") else "git_slicer." + name)
        except ImportError:
            pass                                 # a child imports it (and fails) the usual way
    gc.freeze()                                  # children touch fewer of the pages they share
    Host(path, idle, lock).serve()


class Host:
    def __init__(self, path: str, idle: int, lock: int):
        self.path, self.idle, self.lock = path, idle, lock
        self.children = {}                       # pid -> client connection (None once it vanished)
        self.origins = {}                        # pid -> the command's (cwd, env)
        self.pending = {}                        # connection -> Pending: its request arriving
        self.selector = selectors.DefaultSelector()
        self.stopping = False

    def serve(self) -> None:
        try:
            os.unlink(self.path)                 # a dead host's socket (we hold the lock)
        except FileNotFoundError:
            pass
        old_umask = os.umask(0o177)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.path)
        finally:
            os.umask(old_umask)
        listener.listen(64)
        self.identity = _identity(self.path)
        self.wakeup_r, wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wakeup_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.listener, self.wakeup_w = listener, wakeup_w
        self.selector.register(listener, selectors.EVENT_READ, "accept")
        self.selector.register(self.wakeup_r, selectors.EVENT_READ, "wakeup")
        last = time.monotonic()
        try:
            while not (self.stopping and not self.children):
                busy = self.children or self.pending
                timeout = 1.0 if busy else max(0.0, min(CHECK_EVERY, last + self.idle - time.monotonic()))
                for key, _ in self.selector.select(timeout):
                    if key.data == "accept" and not self.stopping:
                        self._accept()
                        last = time.monotonic()
                    elif key.data == "wakeup":
                        self._drain_wakeup()
                    elif key.data == "request":
                        self._request_arrived(key.fileobj)
                    elif isinstance(key.data, int):
                        self._client_spoke(key.fileobj, key.data)
                self._reap()
                for conn in [c for c, p in self.pending.items() if p.deadline < time.monotonic()]:
                    self._drop_pending(conn, close=True)
                if self.children or self.pending:
                    last = time.monotonic()
                elif time.monotonic() - last >= self.idle or _identity(self.path) != self.identity:
                    break
        finally:
            if _identity(self.path) == self.identity:
                os.unlink(self.path)
                try:
                    os.unlink(self.path + ".lock")   # (one racing to start meets the next socket)
                except OSError:
                    pass
            listener.close()

    def _stop(self, *_):
        self.stopping = True

    def _accept(self) -> None:
        """A new client: its request is read as it arrives (a slow or silent one never holds up
        the others), and dropped after REQUEST_TIMEOUT."""
        conn, _ = self.listener.accept()
        try:
            ours = peer_uid(conn, socket) == os.getuid()
        except OSError:
            ours = False
        if not ours:
            conn.close()
            return
        conn.setblocking(False)
        self.pending[conn] = Pending(time.monotonic() + REQUEST_TIMEOUT)
        self.selector.register(conn, selectors.EVENT_READ, "request")

    def _request_arrived(self, conn) -> None:
        pending = self.pending[conn]
        try:
            complete = pending.receive(conn)
            request = decode_request(pending.body()) if complete else None
        except (OSError, ValueError):
            complete, request = True, None
        if not complete:
            return
        self._drop_pending(conn, close=request is None)
        if request is not None:
            conn.setblocking(True)
            self._start(conn, request, pending.take_fds())

    def _drop_pending(self, conn, close: bool) -> None:
        self.selector.unregister(conn)
        pending = self.pending.pop(conn)
        if close:
            pending.close_fds()
            conn.close()

    def _start(self, conn, request, fds) -> None:
        host = os.getpid()
        pid = os.fork()
        if pid == 0:
            self.host_pid = host
            self._child(conn, request, fds)      # never returns
        for fd in fds:
            os.close(fd)
        self.children[pid] = conn
        self.origins[pid] = request["cwd"], request["env"]
        try:
            conn.sendall(b"pid %d\n" % pid)
        except OSError:
            pass
        self.selector.register(conn, selectors.EVENT_READ, pid)

    def _child(self, conn, request, fds) -> None:
        code = 1
        try:
            os.setpgid(0, 0)
            _die_with_parent(self.host_pid)
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGCHLD, signal.SIGTERM):
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for other in list(self.children.values()) + list(self.pending) + [conn, self.listener]:
                if other is not None:
                    other.close()
            for fd in (self.wakeup_r, self.wakeup_w, self.lock):
                os.close(fd)
            self.selector.close()
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
                os.close(fd)
            _adopt(request)
            code = _run(request["argv"])
        except BaseException as exc:             # never back into the host's loop
            try:
                sys.stderr.write("error: git-slicer host process: %s\n" % exc)
            except Exception:
                pass
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            os._exit(code)

    def _client_spoke(self, conn, pid: int) -> None:
        try:
            data = conn.recv(4096)
        except OSError:
            data = b""
        if not data:                             # the command was killed: so is its child
            self.selector.unregister(conn)
            conn.close()
            self.children[pid] = None
            _signal(pid, signal.SIGKILL)
            return
        for line in data.splitlines():
            word, _, number = line.partition(b" ")
            if word != b"signal" or not number.isdigit():
                continue
            signum = int(number)
            if signum in (signal.SIGINT, signal.SIGQUIT):
                _signal(-pid, signum)            # as a terminal delivers them: the whole group
            elif signum in (signal.SIGTERM, signal.SIGHUP):
                _signal(pid, signum)

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self.wakeup_r, 512):
                pass
        except BlockingIOError:
            pass

    def _reap(self) -> None:
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if not done:
                continue
            conn = self.children.pop(pid)
            cwd, env = self.origins.pop(pid)
            if conn is None:
                continue
            self.selector.unregister(conn)
            if os.WIFSIGNALED(status):
                reply = b"signal %d\n" % os.WTERMSIG(status)
            else:
                reply = b"exit %d\n" % os.waitstatus_to_exitcode(status)
            try:
                conn.sendall(reply)
            except OSError:
                pass
            conn.close()
            self._reconfigure(cwd, env)

    def _reconfigure(self, cwd: str, env: dict) -> None:
        """Adopt the idle time of the repository the last command ran in (after answering it, so
        the command does not wait); `0` ends this process once its children are done."""
        try:
            out = subprocess.run(["git", "config", "--type=int", "--get", "slicer.hostIdle"], cwd=cwd, env=env,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 timeout=5).stdout.strip()
            idle = int(env.get("GIT_SLICER_HOST_IDLE") or out or self.idle)
        except (OSError, ValueError, subprocess.SubprocessError):
            return
        self.idle = max(0, idle)
        if self.idle == 0:
            self.stopping = True


class Pending:
    """A request on its way: a 4-byte length with three descriptors attached, then the body."""

    def __init__(self, deadline: float):
        self.deadline, self.data, self.fds = deadline, b"", []

    def receive(self, conn) -> bool:
        """Read what arrived; whether the request is complete. ValueError: it never will be."""
        try:
            data, ancillary, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(3 * 4))
        except BlockingIOError:
            return False
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                self.fds += [int.from_bytes(payload[i:i + 4], sys.byteorder)
                             for i in range(0, len(payload) - len(payload) % 4, 4)]
        if not data:
            raise ValueError("request cut short")
        self.data += data
        if len(self.fds) != 3:
            raise ValueError("a request carries three descriptors with its first bytes")
        if len(self.data) >= 4 and int.from_bytes(self.data[:4], "big") > REQUEST_LIMIT:
            raise ValueError("request too large")
        return len(self.data) >= 4 and len(self.data) >= 4 + int.from_bytes(self.data[:4], "big")

    def body(self) -> bytes:
        size = int.from_bytes(self.data[:4], "big")
        if len(self.data) != 4 + size:
            raise ValueError("more than one request")
        return self.data[4:]

    def take_fds(self) -> list:
        fds, self.fds = self.fds, []
        return fds

    def close_fds(self) -> None:
        for fd in self.take_fds():
            os.close(fd)


def _adopt(request) -> None:
    """Become the client: its cwd, umask, niceness (only ever raised), environment and standard
    streams."""
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    if request["nice"] > os.getpriority(os.PRIO_PROCESS, 0):
        os.setpriority(os.PRIO_PROCESS, 0, min(request["nice"], 19))
    os.environ.clear()
    os.environ.update(request["env"])
    encoding = sys.stdout.encoding
    sys.stdin = open(0, "r", closefd=False)
    sys.stdout = open(1, "w", encoding=encoding, errors=sys.stdout.errors, closefd=False,
                      buffering=-1 if not os.isatty(1) else 1)
    sys.stderr = open(2, "w", encoding=encoding, errors="backslashreplace", closefd=False, buffering=1)


def _run(argv) -> int:
    from .cli import main
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        sys.stderr.write("%s\n" % code)
        return 1
    return 0


def _die_with_parent(host: int) -> None:
    """SIGKILL this child when the host process dies: its client was told the command failed,
    so the command must not go on (prctl PR_SET_PDEATHSIG; Linux only, like the rest)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != host:                     # it died before prctl took effect
        os._exit(1)


def _signal(pid: int, signum: int) -> None:
    try:
        if pid < 0:
            os.killpg(-pid, signum)
        else:
            os.kill(pid, signum)
    except OSError:
        pass


def _identity(path: str):
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
