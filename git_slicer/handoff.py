"""What `git-slicer` (bin/git-slicer) runs first: hand the command to the user's warm host
process when one runs, else run it here (and start one for the next command).

Starting Python, click and our modules costs about 70 ms, four times git's own `git status` on a
5k-file tree; agents call push, pull and status in loops. The warm host process (`warmhost.py`)
has all of that imported and forks a child per command. The child takes this process's
descriptors 0-2, cwd, umask, niceness, environment and arguments, so it runs exactly the
command this process would have run; this process only relays signals and exits as the child
did.

This module runs before anything else of ours and imports only what a handoff needs. A command is
handed off only when a host process for this exact code (`stamp`) answers on the user's own
socket; anything else (no process, a refusal before the child starts) runs the command here.
`GIT_SLICER_HOST_IDLE=0` (or `slicer.hostIdle=0`) keeps every command in its own process.
"""

import os
import sys

from .rundir import runtime_dir

# Commands that take no terminal input; `exec`, `shell` and the rest always run here.
SERVED = frozenset(("push", "pull", "status", "list", "diff", "log"))
IDLE_ENV = "GIT_SLICER_HOST_IDLE"


def main() -> None:
    argv = sys.argv[1:]
    path = socket_path() if served(argv) else None
    if path is not None:
        code = hand_off(path, argv)
        if code is not None:
            # The child did the work; this process holds nothing to clean up, and the
            # interpreter's own teardown costs ~5 ms of every command.
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:       # (None: started with that descriptor closed)
                    stream.flush()
            os._exit(code)
    from .cli import main as run_here
    try:
        run_here(argv)
    finally:
        if path is not None:
            start_host(path)


def served(argv) -> bool:
    """Whether this command may run in the warm host process."""
    if os.environ.get(IDLE_ENV, "").strip() == "0" or "_GIT_SLICER_COMPLETE" in os.environ:
        return False
    verb = next((a for a in argv if not a.startswith("-")), None)
    return verb in SERVED and all(a in ("-q", "--quiet", "-v", "--verbose") for a in argv[:argv.index(verb)])


def stamp() -> str:
    """What the host process must run: this interpreter, what shapes its start (PYTHON* and
    locale variables: a started interpreter keeps its stdout encoding, path and flags), and every
    module of ours as on disk now (paths, sizes, mtimes), so a reinstall or an edit is never
    served by old code. (A checksum, not a secure hash: it names a socket in the user's own
    directory; hashlib costs 4 ms here.)"""
    import zlib
    package = os.path.dirname(os.path.abspath(__file__))
    facts = ["%s %s" % (sys.executable, sys.version)]
    facts += sorted("%s=%s" % item for item in os.environ.items()
                    if item[0].startswith("PYTHON") or item[0] in ("LANG", "LC_ALL", "LC_CTYPE"))
    for root, dirs, files in os.walk(package):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                st = os.stat(os.path.join(root, name))
                facts.append("%s %d %d" % (os.path.join(root, name), st.st_size, st.st_mtime_ns))
    text = "\n".join(facts).encode(errors="surrogateescape")
    return "%08x%08x" % (zlib.crc32(text), zlib.adler32(text))


def socket_path():
    directory = runtime_dir("host")
    return None if directory is None else os.path.join(directory, stamp() + ".sock")


def encode_request(argv, cwd: str, umask: int, nice: int, env) -> bytes:
    """NUL-separated (no argument, path or variable can hold a NUL): cwd, umask, niceness, the
    argument count, the arguments, then NAME=VALUE per variable."""
    fields = [cwd, "%o" % umask, str(nice), str(len(argv)), *argv, *("%s=%s" % item for item in env.items())]
    return b"\0".join(os.fsencode(field) for field in fields)


def decode_request(data: bytes) -> dict:
    fields = [os.fsdecode(field) for field in data.split(b"\0")]
    count = int(fields[3])
    if count < 0 or len(fields) < 4 + count:
        raise ValueError("malformed request")
    env = dict(field.split("=", 1) for field in fields[4 + count:])
    return {"cwd": fields[0], "umask": int(fields[1], 8), "nice": int(fields[2]), "argv": fields[4:4 + count],
            "env": env}


def hand_off(path: str, argv):
    """Run the command in the host process at `path`; its exit code, or None when it was not
    started there (nothing listens, or the process refused before forking). `_socket`, not
    `socket`: that module imports selectors and builds its enums, 7 ms of every start."""
    import _socket
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(path)
        if peer_uid(sock, _socket) != os.getuid():
            sock.close()
            return None
        umask = os.umask(0o022)
        os.umask(umask)
        request = encode_request(argv, os.getcwd(), umask, os.getpriority(os.PRIO_PROCESS, 0), os.environ)
        descriptors = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2))
        sock.sendmsg([len(request).to_bytes(4, "big")], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, descriptors)])
        sock.sendall(request)
        replies = Replies(sock)
        started = replies.line()
        if not started.startswith(b"pid "):
            sock.close()
            return None
        pid = int(started[4:])
    except (OSError, ValueError):
        sock.close()
        return None
    return _relay(sock, replies, pid)


class Replies:
    """Lines from the host process."""

    def __init__(self, sock):
        self.sock, self.buffer = sock, b""

    def line(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(256)
            if not chunk:
                return b""
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line


def _relay(sock, replies, pid: int) -> int:
    """Forward our signals to the child until it ends; exit as it did."""
    import signal                       # while the child works

    def forward(signum, frame):
        try:
            sock.sendall(b"signal %d\n" % signum)
        except OSError:
            pass
    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
    for signum in forwarded:
        signal.signal(signum, forward)
    try:
        result = replies.line()
    except OSError:
        result = b""
    for signum in forwarded:
        signal.signal(signum, signal.SIG_DFL)
    word, _, number = result.partition(b" ")
    if word == b"exit" and number.isdigit():
        return int(number)
    if word == b"signal" and number.isdigit():
        sys.stdout.flush()
        os.kill(os.getpid(), int(number))        # die the way the child died
        return 128 + int(number)                 # (a signal we ignore)
    sys.stderr.write("error: the git-slicer host process ended during the command (pid %d); "
                     "run it again\n" % pid)
    return 1


def peer_uid(sock, module) -> int:
    """The connected peer's uid (SO_PEERCRED: pid, uid, gid as native ints)."""
    creds = sock.getsockopt(module.SOL_SOCKET, module.SO_PEERCRED, 12)
    return int.from_bytes(creds[4:8], sys.byteorder)


def start_host(path: str) -> None:
    """Start a host process for the next command, unless it is switched off. When one already
    runs (it refused this command, or was busy starting), the new one finds its lock and leaves."""
    idle = _idle_setting()
    if idle <= 0:
        return
    import subprocess
    try:
        subprocess.Popen([sys.executable, "-c", "from git_slicer.warmhost import main; main()", path, str(idle)],
                         cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError:
        pass


def _idle_setting() -> int:
    from .config import Settings
    from .errors import SlicerError
    try:
        return int(Settings().get("slicer.hostIdle"))
    except (SlicerError, OSError, ValueError):
        return 0
