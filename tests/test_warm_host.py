"""The warm host process (git_slicer/warmhost.py, handed commands by git_slicer/handoff.py).

A command it serves must be the command the user ran: same output, exit code, files, working
directory, environment and umask, and it must die when the user's command dies. Which path ran is
seen, not assumed: a `git` wrapper first on PATH records its parent, which is the user's own
process only when the command ran there.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import HAVE_BWRAP, SLICER, Repo

pytestmark = pytest.mark.skipif(not HAVE_BWRAP, reason="needs bubblewrap for the local VM")

REAL_GIT = subprocess.run(["sh", "-c", "command -v git"], stdout=subprocess.PIPE).stdout.decode().strip()


@pytest.fixture
def warm(tmp_path, monkeypatch):
    """Warm host processes on (60 s idle), and a `git` wrapper that logs who ran it."""
    monkeypatch.setenv("GIT_SLICER_HOST_IDLE", "60")
    bindir = tmp_path / "wrapped-bin"
    bindir.mkdir()
    log = tmp_path / "git-parents.log"
    wrapper = bindir / "git"
    wrapper.write_text("#!/bin/sh\necho $PPID >> '%s'\n"
                       "if [ -n \"$HANG_ON\" ] && [ \"$1\" = \"$HANG_ON\" ]; then echo $PPID > \"$HANG_FILE\"; sleep 60; fi\n"
                       "exec '%s' \"$@\"\n" % (log, REAL_GIT))
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir) + os.pathsep + os.environ["PATH"])
    return Warm(Path(os.environ["XDG_RUNTIME_DIR"]) / "git-slicer-host", log)


class Warm:
    def __init__(self, directory: Path, log: Path):
        self.directory, self.log = directory, log

    def socket(self) -> Path:
        """The host process's socket, once it answers."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for found in self.directory.glob("*.sock") if self.directory.is_dir() else ():
                probe = socket.socket(socket.AF_UNIX)
                try:
                    probe.connect(str(found))
                    return found
                except OSError:
                    pass
                finally:
                    probe.close()
            time.sleep(0.05)
        raise AssertionError("no warm host process started")

    def hosts(self) -> set:
        """The pids of host processes that ran here (read now, without waiting)."""
        pids = set()
        for lock in self.directory.glob("*.lock") if self.directory.is_dir() else ():
            try:
                pids.add(int(lock.read_text()))
            except (OSError, ValueError):
                pass
        return pids

    def host_pid(self) -> int:
        return int((Path(str(self.socket()) + ".lock")).read_text())

    def run(self, cwd, *args, env=None, umask=None):
        """(process, git's parents): run git-slicer ARGS; which processes ran git for it."""
        self.log.write_text("")
        popen = subprocess.Popen(SLICER + list(args), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)
        out, err = popen.communicate(timeout=120)
        proc = subprocess.CompletedProcess(popen.args, popen.returncode, out, err)
        proc.pid = popen.pid
        parents = {int(line) for line in self.log.read_text().split()}
        return proc, parents

    def served(self, cwd, *args, **kw):
        proc, parents = self.run(cwd, *args, **kw)
        parents -= self.hosts()                      # a host process's own `git config` after a command
        assert parents and proc.pid not in parents, "ran in its own process, not the warm host"
        return proc

    def own(self, cwd, *args, env=None, **kw):
        env = dict(env or os.environ, GIT_SLICER_HOST_IDLE="0")
        proc, parents = self.run(cwd, *args, env=env, **kw)
        parents -= self.hosts()
        assert not parents or proc.pid in parents
        return proc

    def start(self, cwd):
        """One command in its own process starts the host process; wait until it listens."""
        self.run(cwd, "list")
        return self.socket()


def same(a, b):
    assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr)


def test_served_commands_answer_as_their_own_process_would(launched, warm):
    repo, vm = launched
    repo.vm_sh(vm, "echo vm > vm-new.txt && git add vm-new.txt && git commit -qm 'vm work' && echo more >> README.md")
    repo.write("host-new.txt", "host\n")
    warm.start(repo.path)
    for args in (["status"], ["status", "--json"], ["list", "--json"], ["diff", vm], ["diff", vm, "--stat"],
                 ["log", vm], ["status", "no-such-vm"]):
        same(warm.served(repo.path, *args), warm.own(repo.path, *args))
    for args in (["status", "--no-such-option"], ["push", "--help"]):    # no git to see where they ran
        same(warm.run(repo.path, *args)[0], warm.own(repo.path, *args))
    pulled = warm.served(repo.path, "pull", vm, "--json")
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout)["vm"] == vm
    assert (repo.path / "vm-new.txt").read_text() == "vm\n"
    assert repo.git("log", "-1", "--format=%s").strip() == "vm work"
    pushed = warm.served(repo.path, "push", "--json")
    assert pushed.returncode == 0, pushed.stderr
    assert repo.vm_sh(vm, "cat host-new.txt") == "host\n"


def test_a_served_command_takes_the_callers_directory_environment_and_umask(tmp_path, warm):
    repos = []
    for name in ("one", "two", "three"):
        r = Repo(tmp_path / name)
        r.path.mkdir()
        r.git("init", "-q")
        r.write("f", name)
        r.commit()
        repos.append(r)
    warm.start(tmp_path)
    for r in repos[:2]:                                       # the caller's working directory
        listed = json.loads(warm.served(r.path, "list", "--json").stdout)
        assert sorted({w["worktree"] for w in listed}) == [str(r.path)]
    env = dict(os.environ, GIT_SLICER_PROVIDER="nonesuch")       # its environment
    refused = warm.served(repos[2].path, "push", "--launch", env=env)
    assert refused.returncode == 2 and b"unknown provider 'nonesuch'" in refused.stderr
    same(refused, warm.own(repos[2].path, "push", "--launch", env=env))
    for r, umask in ((repos[0], 0o077), (repos[1], 0o022)):   # its umask, seen in what it creates
        warm.served(r.path, "push", "--launch", umask=umask)
        own = Repo(tmp_path / ("own-%o" % umask))
        own.path.mkdir()
        own.git("init", "-q")
        own.commit()
        warm.own(own.path, "push", "--launch", umask=umask)
        assert stat_mode(r.path / ".git" / "slicer") == stat_mode(own.path / ".git" / "slicer")
    assert stat_mode(repos[0].path / ".git" / "slicer") == 0o700
    assert stat_mode(repos[1].path / ".git" / "slicer") == 0o755


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGINT"])
def test_a_served_command_dies_with_the_callers_command(launched, warm, how):
    repo, vm = launched
    warm.start(repo.path)
    proc, child = hanging_status(repo)
    assert child != proc.pid                                  # it was served
    proc.send_signal(getattr(signal, how))
    out, err = proc.communicate(timeout=30)
    expected = {"SIGKILL": -9, "SIGTERM": -15, "SIGINT": 130}[how]
    assert proc.returncode == expected, err
    gone(child)
    assert not alive(child), "the served command outlived the command that asked for it"
    assert alive(warm.host_pid())                             # the host process serves on
    assert warm.served(repo.path, "status").returncode == 0


def hanging_status(repo):
    """A served `git slicer status` held in its first git call: (its process, the served child)."""
    hang = repo.path.parent / "hang.pid"
    env = dict(os.environ, HANG_ON="rev-parse", HANG_FILE=str(hang))
    proc = subprocess.Popen(SLICER + ["status"], cwd=repo.path, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not (hang.exists() and hang.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc, int(hang.read_text())


def gone(pid: int, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid) as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_a_killed_host_process_takes_its_commands_with_it(launched, warm):
    repo, vm = launched
    warm.start(repo.path)
    host = warm.host_pid()
    proc, child = hanging_status(repo)
    os.kill(host, signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert b"host process ended during the command" in err and b"Traceback" not in err
    gone(child)
    assert not alive(child)
    # The next command runs in its own process (nothing listens) and starts a new host process.
    again, parents = warm.run(repo.path, "status")
    assert again.returncode == 0 and again.pid in parents, again.stderr
    deadline = time.monotonic() + 30
    while warm.host_pid() == host and time.monotonic() < deadline:
        time.sleep(0.1)
    warm.socket()
    assert warm.served(repo.path, "status").returncode == 0


def test_the_host_process_ends_when_idle_and_when_configured_off(repo, warm, monkeypatch):
    monkeypatch.setenv("GIT_SLICER_HOST_IDLE", "1")
    sock = warm.start(repo.path)
    host = warm.host_pid()
    deadline = time.monotonic() + 20
    while alive(host) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(host) and not sock.exists()
    monkeypatch.setenv("GIT_SLICER_HOST_IDLE", "60")
    warm.start(repo.path)
    host = warm.host_pid()
    monkeypatch.delenv("GIT_SLICER_HOST_IDLE")
    repo.git("config", "slicer.hostIdle", "0")
    proc, parents = warm.run(repo.path, "list")             # served, then the host leaves
    assert proc.returncode == 0 and proc.pid not in parents
    deadline = time.monotonic() + 20
    while alive(host) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(host)
    warm.own(repo.path, "list", env=dict(os.environ))        # and none starts again
    time.sleep(1)
    assert not list(warm.directory.glob("*.sock"))


def test_the_socket_is_the_users_alone_and_no_vm_sees_it(launched, warm):
    repo, vm = launched
    sock = warm.start(repo.path)
    assert stat_mode(warm.directory) == 0o700 and stat_mode(sock) == 0o600
    assert sock.stat().st_uid == os.getuid()
    for path in (sock, warm.directory):
        assert repo.vm_sh(vm, "test -e %s && echo present || echo absent" % path) == "absent\n"
    probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
             "try:\n    s.connect(sys.argv[1]); print('connected')\nexcept OSError:\n    print('refused')\n")
    assert repo.vm_sh(vm, "python3 - %s <<'EOF'\n%sEOF\n" % (sock, probe)) == "refused\n"


def test_a_directory_that_is_not_the_users_own_is_never_used(repo, warm):
    warm.directory.mkdir(mode=0o755)
    warm.directory.chmod(0o755)
    for _ in range(2):
        proc = warm.own(repo.path, "list", env=dict(os.environ))
        assert proc.returncode == 0
        proc, parents = warm.run(repo.path, "list")
        assert proc.returncode == 0 and proc.pid in parents   # ran here: no host process
    assert not list(warm.directory.iterdir())


OTHER_UID = 65534
# A process of another user that ignores file permissions: what the uid check must stop even
# when the socket's and directory's modes do not.
AS_OTHER_USER = ["setpriv", "--reuid=%d" % OTHER_UID, "--regid=%d" % OTHER_UID, "--clear-groups",
                 "--inh-caps=+dac_override,+dac_read_search", "--ambient-caps=+dac_override,+dac_read_search"]
as_root = pytest.mark.skipif(os.getuid() != 0 or not shutil.which("setpriv"),
                             reason="acting as another user needs root and setpriv")
PEER_CLIENT = """
import array, os, socket, sys
path, request = sys.argv[1], open(sys.argv[2], "rb").read()
r, w = os.pipe()
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
try:
    s.connect(path)
    s.sendmsg([len(request).to_bytes(4, "big")], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, w, w]))])
    s.sendall(request)
    os.close(w)
    reply = b""
    while not reply.startswith(b"pid ") or b"exit" not in reply:
        chunk = s.recv(256)
        if not chunk:
            break
        reply += chunk
except OSError as exc:
    reply = b"error %s" % exc.__class__.__name__.encode()
os.set_blocking(r, False)
try:
    out = os.read(r, 65536)
except BlockingIOError:
    out = b""
print(repr((os.getuid(), reply.startswith(b"pid "), out)))
"""


@as_root
def test_a_connection_from_another_user_is_refused_before_anything_runs(repo, warm, tmp_path):
    """The socket's modes keep other users out; the peer check (SO_PEERCRED) holds even when
    something lets one through: here a process of uid 65534 that may ignore file permissions
    (CAP_DAC_OVERRIDE). The same client with our uid is served, so only the uid differs."""
    from git_slicer.handoff import encode_request
    sock = warm.start(repo.path)
    request = tmp_path / "request"
    request.write_bytes(encode_request(["list"], str(repo.path), 0o022, 0, dict(os.environ)))
    client = [sys.executable, "-S", "-c", PEER_CLIENT, str(sock), str(request)]
    ours = ast.literal_eval(subprocess.run(client, stdout=subprocess.PIPE, check=True, timeout=60).stdout.decode())
    assert ours[:2] == (os.getuid(), True) and str(repo.path).encode() in ours[2]
    other = subprocess.run(AS_OTHER_USER + client, stdout=subprocess.PIPE, check=True, timeout=60).stdout.decode()
    assert ast.literal_eval(other) == (OTHER_UID, False, b"")     # closed at once: nothing was started


@as_root
def test_a_caller_never_hands_its_command_to_another_users_process(tmp_path, warm, request):
    """The other side of the same check: a caller (uid 65534 here) whose socket path holds a
    process of another user (root, who can make one in the caller's own directory) hands it
    nothing, not its descriptors, environment or command, and runs the command itself."""
    from git_slicer.handoff import stamp
    runtime = Path(tempfile.mkdtemp(prefix="gs-rt-", dir="/tmp"))      # socket paths stay short
    request.addfinalizer(lambda: shutil.rmtree(runtime, ignore_errors=True))
    directory = runtime / "git-slicer-host"
    directory.mkdir(parents=True)
    for path in (runtime, directory):
        os.chown(path, OTHER_UID, OTHER_UID)
        path.chmod(0o700)
    impostor = socket.socket(socket.AF_UNIX)
    impostor.bind(str(directory / (stamp() + ".sock")))
    impostor.listen(4)
    seen = []

    def answer():
        conn, _ = impostor.accept()
        conn.settimeout(5)
        try:
            got = conn.recv(4096)
            seen.append(got)
            if got:
                conn.sendall(b"pid 1\nexit 42\n")     # "done": what a served command ends with
        except OSError:
            seen.append(b"")
        conn.close()
    listener = threading.Thread(target=answer, daemon=True)
    listener.start()
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime))
    proc = subprocess.run(AS_OTHER_USER + SLICER + ["list"], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    listener.join(10)
    impostor.close()
    assert seen == [b""]                     # it connected, looked at who listens, and left
    assert proc.returncode == 1 and b"not inside a git worktree" in proc.stderr, proc.stderr   # its own answer


def test_garbage_on_the_socket_leaves_the_host_serving(repo, warm):
    sock = warm.start(repo.path)
    for junk in (b"", b"\x00\x00\x00\x05hello", b"\xff\xff\xff\xffxx", b"GET / HTTP/1.0\r\n\r\n"):
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(sock))
        s.sendall(junk)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(10)
        assert s.recv(100) == b""                 # closed without starting anything
        s.close()
    assert warm.served(repo.path, "list").returncode == 0


def test_a_silent_client_holds_up_no_one_and_is_dropped(repo, warm):
    sock = warm.start(repo.path)
    silent = socket.socket(socket.AF_UNIX)
    silent.connect(str(sock))                     # says nothing
    started = time.monotonic()
    assert warm.served(repo.path, "list").returncode == 0
    assert time.monotonic() - started < 4         # not held behind the silent one (5 s limit)
    silent.settimeout(30)
    assert silent.recv(100) == b""                # dropped at the limit, nothing started
    assert 4 < time.monotonic() - started < 30
    silent.close()


def test_concurrent_commands_are_each_served(launched, warm):
    repo, vm = launched
    warm.start(repo.path)
    procs = [subprocess.Popen(SLICER + ["status", "--json"], cwd=repo.path, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert len({json.loads(out)["vm"] for out, _ in outs}) == 1


def test_the_stamp_names_the_code_on_disk(tmp_path):
    import shutil
    import git_slicer
    copy = tmp_path / "pkg"
    shutil.copytree(os.path.dirname(git_slicer.__file__), copy / "git_slicer",
                    ignore=shutil.ignore_patterns("__pycache__"))
    probe = ["-c", "import sys; sys.path.insert(0, sys.argv[1]); from git_slicer import handoff; print(handoff.stamp())",
             str(copy)]

    def stamp(**env):
        return subprocess.run([sys.executable, *probe], check=True, stdout=subprocess.PIPE,
                              env=dict(os.environ, **env)).stdout

    before = stamp()
    assert stamp() == before
    assert stamp(PYTHONIOENCODING="latin-1") != before      # an interpreter started otherwise
    assert stamp(LC_ALL="C") != before
    module = copy / "git_slicer" / "wire" / "files.py"
    os.utime(module, ns=(module.stat().st_atime_ns, module.stat().st_mtime_ns + 10 ** 9))
    assert stamp() != before
