"""A warm agent remembers what its last scan found and rescans only what changed since
(agent/memo.py, agent/watch.py). Its answers must be exactly a cold agent's full scan, whatever
the VM did in between: every kind of edit, git commands in the VM, ignore rules, renamed
directories, floods of changes, and edits made while a push is being applied."""

import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import HAVE_BWRAP, git
from git_slicer.wire.framing import Connection, ProtocolError, RemoteError
from hostile_agent import guest_home, install, uninstall, vm_home

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")

TOKEN = "memo-test-token"


def wait_for(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting: " + what
        time.sleep(0.02)


class WarmAgent:
    """`git slicer agent --listen unix:...` (as a VM runs it) behind a `git` that logs its argv."""

    def __init__(self, tmp_path):
        shim = tmp_path / "shim"
        shim.mkdir()
        self.log = tmp_path / "git.log"
        (shim / "git").write_text('#!/bin/sh\nprintf "%%s\\n" "$*" >> %s\nexec %s "$@"\n'
                                  % (self.log, shutil.which("git")))
        (shim / "git").chmod(0o755)
        self.address = str(tmp_path / "agent.sock")
        env = {**os.environ, "GIT_SLICER_TOKEN": TOKEN, "PATH": "%s:%s" % (shim, os.environ["PATH"])}
        self.proc = subprocess.Popen([sys.executable, "-m", "git_slicer", "agent", "--listen", "unix:" + self.address],
                                     env=env, stderr=subprocess.PIPE)
        wait_for(lambda: os.path.exists(self.address), "the agent listens")
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.address)
        self.conn = Connection(self.sock.makefile("rb"), self.sock.makefile("wb"))
        self.conn.send({"op": "auth", "token": TOKEN})
        self.conn.recv_reply()
        self.conn.send({"op": "hello", "protocol": 1})
        self.conn.recv_reply()

    def state(self, path) -> dict:
        self.log.write_text("")
        try:
            self.conn.send({"op": "state", "path": str(path)})
            return self.conn.recv_reply()
        except (ProtocolError, OSError):
            self.proc.kill()
            raise AssertionError("the agent ended: " + self.proc.communicate()[1].decode()[-3000:]) from None

    def statuses(self) -> list:
        """The `git status` calls of the last request, each as its argv after `status`."""
        return [line for line in self.log.read_text().splitlines() if " status " in " %s " % line]

    def close(self) -> None:
        try:
            self.conn.send({"op": "bye"})
            self.conn.recv_reply()
        except (ProtocolError, OSError):
            pass                        # it ended already (the test says why)
        self.sock.close()
        self.proc.kill()
        self.proc.wait(10)


def cold_state(path) -> dict:
    """A one-shot agent's state: always a full scan."""
    proc = subprocess.Popen([sys.executable, "-m", "git_slicer", "agent", "--stdio"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    conn = Connection(proc.stdout, proc.stdin)
    conn.send({"op": "hello", "protocol": 1})
    conn.recv_reply()
    conn.send({"op": "state", "path": str(path)})
    reply = conn.recv_reply()
    conn.send({"op": "bye"})
    conn.recv_reply()
    proc.wait(10)
    return reply


def same_answer(warm: dict, cold: dict) -> None:
    keys = ("exists", "head", "branch", "branches", "overlay")
    assert {k: warm[k] for k in keys} == {k: cold[k] for k in keys}


def full_scan(call: str) -> bool:
    """A `git status` of the whole tree: it names the tree as the pathspec "." (the scan never
    reads git's untracked cache), where a memo's rescan names the paths that changed."""
    return call.endswith(" -- .")


@pytest.fixture
def vm_repo(tmp_path):
    root = tmp_path / "vm"
    root.mkdir()
    git(root, "init", "-q")
    for i in range(40):
        path = root / ("d%d" % (i % 4)) / ("s%d" % (i % 3)) / ("f%d.txt" % i)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("file %d\n" % i)
    (root / "top.txt").write_text("top\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "one")
    # Past git's racy window: a cold agent's `git status` (cold_state) then leaves the index as
    # it is. Rewriting it would be a change the warm agent did not make: a full scan.
    time.sleep(2.1)
    return root


def test_a_warm_agent_answers_as_a_full_scan_would_after_every_kind_of_vm_change(tmp_path, vm_repo):
    root = vm_repo
    agent = WarmAgent(tmp_path)
    try:
        def check(why):
            warm = agent.state(root)
            same_answer(warm, cold_state(root))
            return agent.statuses()

        assert check("first") and check("again") == [], "nothing changed: no git status at all"

        (root / "d1/s1/f1.txt").write_text("file 1\n")                  # same bytes: still clean
        (root / "d1/s1/f1.txt").write_text("fILE 1\n")                  # same size, same second
        calls = check("edit")
        assert len(calls) == 1 and calls[0].endswith("-- d1/s1/f1.txt"), calls
        script = "mkdir -p n/m/k && echo new > n/m/k/new.txt && echo x > n/m/k2"
        subprocess.run(script, shell=True, cwd=root, check=True)        # a new tree, filled at once
        assert check("new tree")[0].endswith("-- n"), "a new directory is rescanned whole"
        os.unlink(root / "d2/s2/f2.txt")
        check("delete")
        os.chmod(root / "d0/s0/f0.txt", 0o755)
        check("exec bit")
        os.unlink(root / "top.txt")
        os.symlink("d0", root / "top.txt")
        check("file to symlink")
        shutil.rmtree(root / "d3")
        check("directory removed")
        os.rename(root / "d0", root / "moved")
        check("directory renamed")
        (root / "moved/s0/f0.txt").write_text("edited where it moved\n")
        check("an edit below the moved directory")
        os.rename(root / "moved", root / "d0")
        check("and back")
        (root / "n/m/k/new.txt").write_text("new\n")
        (root / "d1/s1/f1.txt").write_text("file 1\n")
        check("edits undone")
        (root / "n/.gitignore").write_text("k2\n")
        assert full_scan(check(".gitignore")[0]), "a rule file changed: a full scan"
        (root / ".git/info").mkdir(exist_ok=True)
        (root / ".git/info/exclude").write_text("top.txt\n")
        check("info/exclude")
        git(root, "add", "d1/s1/f1.txt", "n")
        check("git add in the VM")
        git(root, "commit", "-q", "-m", "vm commit")
        check("git commit in the VM")
        git(root, "checkout", "-q", "-b", "other")
        check("another branch")
        git(root, "reset", "-q", "--hard", "HEAD~1")
        check("reset --hard")
        os.makedirs(os.path.expanduser("~/.config/git"), exist_ok=True)
        with open(os.path.expanduser("~/.config/git/ignore"), "w") as fh:
            fh.write("f1*\n")
        (root / "d1/s1/f1b.txt").write_text("ignored by the global rule\n")
        check("a global ignore file")
        time.sleep(2.1)                     # past git's racy window (see vm_repo)
        for i in range(1200):                                           # more than MAX_DIRTY
            (root / "d1" / ("many-%d" % i)).write_text("x")
        check("a flood")
        (root / "d1/s1/f1.txt").write_text("last\n")
        calls = check("after the flood")
        assert len(calls) == 1 and not full_scan(calls[0]), "the memo is back after a full scan"
    finally:
        agent.close()


def test_a_warm_agent_rewatches_after_its_event_queue_overflows(tmp_path, vm_repo):
    """More changes than the kernel queues (max_queued_events) lose events: a full scan, and the
    watches are built again, so the edit after that is still seen."""
    root = vm_repo
    with open("/proc/sys/fs/inotify/max_queued_events") as fh:
        queue = int(fh.read())
    if queue > 40000:
        pytest.skip("max_queued_events is %d" % queue)
    agent = WarmAgent(tmp_path)
    try:
        agent.state(root)
        # Two files written in turn: every write is an event of its own (the kernel merges only
        # repeats of the last one), yet only two paths changed, well under MAX_DIRTY.
        first, second = (os.open(root / name, os.O_WRONLY | os.O_APPEND) for name in ("d2/s2/f2.txt", "d2/s0/f6.txt"))
        for _ in range(queue // 2 + 100):
            os.write(first, b".")
            os.write(second, b".")
        os.close(first)
        os.close(second)
        (root / "d1/s1/f1.txt").write_text("the last change, lost with the overflow\n")
        same_answer(agent.state(root), cold_state(root))
        (root / "d2/s0/f8.txt").write_text("after the overflow\n")
        warm = agent.state(root)
        same_answer(warm, cold_state(root))
        assert agent.statuses()[0].endswith("-- d2/s0/f8.txt"), agent.statuses()
    finally:
        agent.close()


def test_a_warm_agent_under_a_stream_of_writes_ends_with_the_full_scans_answer(tmp_path, vm_repo):
    """Requests race a writer creating, editing and removing files and directories; whatever
    each request saw, the one after the writer stops agrees with a full scan."""
    root = vm_repo
    agent = WarmAgent(tmp_path)
    stop = threading.Event()

    def writer():
        n = 0
        while not stop.is_set():
            n += 1
            d = root / ("w%d" % (n % 7)) / ("x%d" % (n % 5))
            d.mkdir(parents=True, exist_ok=True)
            (d / ("f%d" % (n % 11))).write_text("%d\n" % n)
            (root / "d1/s1" / ("f%d.txt" % (1 + 3 * (n % 3)))).write_text("w%d\n" % n)
            if n % 13 == 0:
                shutil.rmtree(root / ("w%d" % (n % 7)), ignore_errors=True)
    thread = threading.Thread(target=writer)
    try:
        agent.state(root)
        thread.start()
        for _ in range(60):             # each one races the writer (files vanish as they are hashed)
            try:
                agent.state(root)
            except RemoteError as exc:  # a file rewritten under three scans in a row: the only other answer
                assert exc.code == "busy", exc
        stop.set()
        thread.join()
        same_answer(agent.state(root), cold_state(root))
    finally:
        stop.set()
        agent.close()


def test_a_repository_with_a_nested_one_is_always_scanned_in_full(tmp_path, vm_repo):
    root = vm_repo
    nested = root / "d0" / "inner"
    nested.mkdir()
    git(nested, "init", "-q")
    (nested / "a").write_text("a\n")
    git(nested, "add", "a")
    git(nested, "commit", "-q", "-m", "inner")
    git(root, "add", "d0/inner")
    git(root, "commit", "-q", "-m", "a gitlink")
    agent = WarmAgent(tmp_path)
    try:
        agent.state(root)
        (nested / "a").write_text("b\n")
        git(nested, "commit", "-q", "-am", "inner 2")          # the gitlink moves: only .git changed
        same_answer(agent.state(root), cold_state(root))
        assert agent.statuses() and full_scan(agent.statuses()[0])
    finally:
        agent.close()


@pytest.mark.skipif(not HAVE_BWRAP, reason="the local VM runs in the bubblewrap sandbox")
def test_a_vm_edit_made_while_a_push_is_applied_is_seen_by_the_next_command(launched):
    """The state after a push is the one before it with the touched paths rescanned; an edit
    elsewhere, made while the push was being applied, must still reach the next command."""
    repo, vm = launched
    hold = vm_home(vm) / "hold"
    hold.mkdir()
    install(repo, vm, None, env={"GIT_SLICER_TEST_HOLD_AT": "agent:push-applied",
                                 "GIT_SLICER_TEST_HOLD_DIR": guest_home(vm) + "/hold"})
    assert repo.slicer_json("status", vm)["in_sync"] is True        # the new warm agent remembers
    repo.write("src/app.py", "print('pushed')\n")
    push = subprocess.Popen([sys.executable, "-m", "git_slicer", "push", vm], cwd=repo.path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: (hold / "held").exists() or push.poll() is not None, "the push reaches the hold")
    assert push.poll() is None, push.communicate()
    untouched = next(vm_home(vm).glob("*/README.md"))
    untouched.write_text(untouched.read_text() + "a VM edit while the push is applied\n")
    (hold / "go").touch()
    _, err = push.communicate(timeout=60)
    assert push.returncode == 0, err
    status = repo.slicer_json("status", vm)         # the same warm agent
    uninstall(repo)
    assert status["vm_side"]["changed_since_sync"] == ["README.md"], status


def edited_where_no_event_reports_it(repo, vm):
    """README.md in the VM, once the warm agent remembers it clean, edited through a hard link
    from outside the worktree: no inotify event reaches the agent, its memory still says clean."""
    vm_file = next(vm_home(vm).glob("*/README.md"))
    outside = vm_home(vm) / "readme-link"
    os.link(vm_file, outside)
    assert repo.slicer_json("status", vm)["in_sync"] is True
    with open(outside, "a") as fh:
        fh.write("the VM's own line\n")
    assert repo.slicer_json("status", vm)["in_sync"] is True, "from memory: no event came"
    return vm_file


@pytest.mark.skipif(not HAVE_BWRAP, reason="the local VM runs in the bubblewrap sandbox")
def test_a_push_never_overwrites_a_vm_change_no_event_reported(launched):
    """A write through a hard link from outside the worktree raises no event the agent sees.
    The state from memory then calls the file clean, but the push scans the paths it is about
    to write afresh and stops instead of overwriting the VM's change."""
    repo, vm = launched
    vm_file = edited_where_no_event_reports_it(repo, vm)
    repo.write("README.md", "# the host's version\n")
    result = repo.slicer("push", vm, check=False)
    assert result.returncode != 0 and b"changed since it was inspected" in result.stderr, result.stderr
    assert "the VM's own line" in vm_file.read_text()
    again = repo.slicer("push", vm, check=False)              # a full scan now: the usual refusal
    assert again.returncode != 0 and b"README.md" in again.stderr, again.stderr
    assert "the VM's own line" in vm_file.read_text()


@pytest.mark.skipif(not HAVE_BWRAP, reason="the local VM runs in the bubblewrap sandbox")
def test_vm_rm_asks_for_a_full_scan_never_the_warm_agents_memory(launched):
    """A change no event reported may hide from the warm agent's memory for a while; removing
    the VM cannot be undone, so `vm rm` has the VM scanned in full and still refuses."""
    repo, vm = launched
    vm_file = edited_where_no_event_reports_it(repo, vm)
    result = repo.slicer("vm", "rm", vm, check=False)
    assert result.returncode != 0 and b"README.md" in result.stderr, result.stderr
    assert vm_file.exists()


@pytest.mark.skipif(not HAVE_BWRAP, reason="the local VM runs in the bubblewrap sandbox")
def test_a_push_into_a_vm_with_changes_checks_every_path_it_may_rewrite(launched):
    """Into a VM with an overlay, a push checks the commit out with `read-tree --reset -u`,
    which rewrites any tracked file that differs from its index entry, touched or not: with a
    state from memory, every path is checked first, and the unseen edit stays."""
    repo, vm = launched
    repo.write("src/lib.py", "VALUE = 2\n")                     # an overlay in the VM
    repo.slicer("push", vm)
    vm_file = edited_where_no_event_reports_it(repo, vm)
    repo.write("src/app.py", "print('changed on the host')\n")  # README.md is not touched
    result = repo.slicer("push", vm, check=False)
    assert result.returncode != 0 and b"changed since it was inspected" in result.stderr, result.stderr
    assert "the VM's own line" in vm_file.read_text()


@pytest.mark.skipif(not HAVE_BWRAP, reason="the local VM runs in the bubblewrap sandbox")
def test_a_push_that_checks_every_path_still_leaves_a_state_to_remember(launched):
    """The check of every path (above) scans the VM in full and renews the memory; the push's
    journal must name the renewed state, or the state after the push is dropped and the next
    command scans in full again (what every push after a VM change paid)."""
    repo, vm = launched
    shim = vm_home(vm) / "shim"
    shim.mkdir()
    log = vm_home(vm) / "git.log"
    (shim / "git").write_text('#!/bin/sh\nprintf "%%s\\n" "$*" >> %s/git.log\nexec %s "$@"\n'
                              % (guest_home(vm), shutil.which("git")))
    (shim / "git").chmod(0o755)
    install(repo, vm, None, env={"PATH": "%s/shim:/usr/local/bin:/usr/bin:/bin" % guest_home(vm)})
    repo.write("src/lib.py", "VALUE = 2\n")                     # an overlay in the VM
    repo.slicer("push", vm)
    assert repo.slicer_json("status", vm)["in_sync"] is True   # the warm agent remembers
    repo.write("src/app.py", "print('changed on the host')\n")
    log.write_text("")
    repo.slicer("push", vm)
    full_scans = [line for line in log.read_text().splitlines() if line.split()[:1] == ["status"]]
    assert len(full_scans) == 1, "the check of every path: %s" % full_scans
    log.write_text("")
    assert repo.slicer_json("status", vm)["in_sync"] is True
    statuses = [line for line in log.read_text().splitlines() if " status " in " %s " % line]
    uninstall(repo)
    assert statuses == [], "the state after the push was remembered: %s" % statuses


def test_what_else_decides_status_is_watched_too(tmp_path, vm_repo, monkeypatch):
    """A replace ref (it changes what HEAD's commit holds, and no file), a core.excludesFile
    inside the worktree, and the global ignore file git reads (under HOME, whatever the agent's
    XDG_CONFIG_HOME says: git runs without it) each change the answer of a full scan."""
    root = vm_repo
    (root / "top.txt").write_text("top v2\n")
    git(root, "commit", "-q", "-am", "two")
    (root / "myignore").write_text("")
    git(root, "config", "core.excludesFile", "myignore")
    for name in ("a.log", "b.tmp", "c.bak"):
        (root / "d0" / name).write_text(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-elsewhere"))
    agent = WarmAgent(tmp_path)
    try:
        def check():
            same_answer(agent.state(root), cold_state(root))
        check()
        git(root, "replace", "HEAD", "HEAD~1")
        check()
        git(root, "replace", "-d", git(root, "rev-parse", "HEAD").strip())
        check()
        (root / "myignore").write_text("*.log\n")
        check()
        git(root, "config", "--unset", "core.excludesFile")     # the global ignore file counts again
        check()
        os.makedirs(os.path.expanduser("~/.config/git"), exist_ok=True)
        with open(os.path.expanduser("~/.config/git/ignore"), "w") as fh:         # git reads this one
            fh.write("*.tmp\n")
        check()
    finally:
        agent.close()


def test_a_config_file_written_twice_in_one_timestamp_tick_is_told_apart_by_its_bytes(vm_repo, monkeypatch):
    """A global ignore file changed moments ago is remembered with its bytes, not only its stat
    data: a second write in the same timestamp tick (4 ms here, 1-2 s on some file systems)
    leaves the stat data as it was. Such a tick cannot be had on demand, so the file's stat data
    is frozen (in this process, which runs the agent's code) after the first write."""
    from git_slicer.agent import memo as memo_mod
    from git_slicer.agent.server import Repo
    monkeypatch.setattr(memo_mod, "_memos", {})
    monkeypatch.setattr(memo_mod, "_enabled", False)
    memo_mod.enable()
    ignore = os.path.join(os.environ["HOME"], ".config", "git", "ignore")
    os.makedirs(os.path.dirname(ignore), exist_ok=True)
    with open(ignore, "w") as fh:
        fh.write("aaaa.txt\n")
    (vm_repo / "aaaa.txt").write_text("a\n")
    (vm_repo / "bbbb.txt").write_text("b\n")
    repo = Repo(str(vm_repo))
    assert "bbbb.txt" in repo.state()["overlay"]["files"]
    assert "bbbb.txt" in repo.state()["overlay"]["files"] and memo_mod.of(repo.root).recalled
    real_stat, frozen = os.stat, os.stat(ignore)
    monkeypatch.setattr(os, "stat", lambda path, *a, **k: frozen if os.fspath(path) == ignore else real_stat(path, *a, **k))
    with open(ignore, "w") as fh:
        fh.write("bbbb.txt\n")                      # the same size, and (frozen) the same stat data
    warm = repo.state()
    assert not memo_mod.of(repo.root).recalled
    assert sorted(warm["overlay"]["files"]) == ["aaaa.txt"]
    same_answer(warm, cold_state(vm_repo))


def test_a_worktree_swapped_for_a_copy_at_the_same_path_is_scanned_again(tmp_path, vm_repo):
    """The watches follow the old directories; a copy put in their place raises no event there."""
    parent = tmp_path / "p"
    parent.mkdir()
    shutil.move(str(vm_repo), str(parent / "vm"))
    root = parent / "vm"
    agent = WarmAgent(tmp_path)
    try:
        agent.state(root)
        os.rename(parent, tmp_path / "p-old")
        subprocess.run(["cp", "-a", str(tmp_path / "p-old"), str(parent)], check=True)
        (root / "top.txt").write_text("changed in the copy\n")
        same_answer(agent.state(root), cold_state(root))
    finally:
        agent.close()
