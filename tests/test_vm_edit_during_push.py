"""A VM change to a path a push has just written is the VM's change, never the agreed state.

The agent scans the paths a push touched after applying it, and the host takes that scan as the
state both sides agree on. A VM user (or agent) who changes one of those paths between the apply
and that scan, or before a killed push is finished, must not have the change agreed: a later
push would then overwrite it without a word (agent/transaction.py, _left_by_push)."""

import os
import subprocess
import time

import pytest

from conftest import HAVE_BWRAP, SLICER
from hostile_agent import guest_home, install, uninstall, vm_home

pytestmark = pytest.mark.skipif(not HAVE_BWRAP, reason="the local VM runs in the bubblewrap sandbox")

# What the host pushes and what the VM makes of the file before the agent's scan: an edit; the
# committed version put back (git in the VM then calls it clean: only its bytes tell it from
# what the push placed); a removed file put back as committed.
CASES = {
    "edited": ("src/app.py", "print('the host')\n", "print('edited in the VM while the push was applied')\n"),
    "reverted": ("src/app.py", "print('the host')\n", None),
    "recreated": ("src/lib.py", None, None),
}
EDITS = pytest.mark.parametrize("edit", sorted(CASES))


def pushed_and_edited(repo, edit: str):
    """(path, what the host pushes (None: removed), what the VM writes there)."""
    path, host, vm = CASES[edit]
    return path, host, vm if vm is not None else repo.git("show", "HEAD:" + path)


def host_writes(repo, path: str, content) -> None:
    if content is None:
        (repo.path / path).unlink()
    else:
        repo.write(path, content)


def vm_file(vm, rel):
    return next(vm_home(vm).glob("*/.git")).parent / rel


def the_edit_is_the_vms_own(repo, vm, path: str, host, content: str) -> None:
    """status reports the edit as the VM's, a push of another host version refuses, the VM
    keeps its bytes, and the pull that was asked for brings them home."""
    status = repo.slicer_json("status", vm)
    assert status["vm_side"]["changed_since_sync"] == [path], status
    repo.write(path, "print('the host, once more')\n")
    result = repo.slicer("push", vm, check=False)
    assert result.returncode != 0 and path.encode() in result.stderr, result.stderr
    assert vm_file(vm, path).read_text() == content
    host_writes(repo, path, host)                   # back to what was pushed
    repo.slicer("pull", vm)
    assert (repo.path / path).read_text() == content


def held_push(repo, vm, while_held, at="agent:push-applied", succeeds=True) -> bytes:
    """Push, held at `at` (after applying, before the agent's scan), `while_held()` meanwhile;
    its stderr."""
    hold = vm_home(vm) / "hold"
    hold.mkdir(exist_ok=True)
    install(repo, vm, None, env={"GIT_SLICER_TEST_HOLD_AT": at, "GIT_SLICER_TEST_HOLD_DIR": guest_home(vm) + "/hold"})
    push = subprocess.Popen([*SLICER, "push", vm], cwd=repo.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (hold / "held").exists():
        assert push.poll() is None and time.monotonic() < deadline, push.communicate()
        time.sleep(0.02)
    while_held()
    (hold / "go").touch()
    _, err = push.communicate(timeout=60)
    uninstall(repo)
    assert (push.returncode == 0) == succeeds, err
    return err


def as_the_push_left_it(vm, path: str, host) -> None:
    if host is None:
        assert not vm_file(vm, path).exists()
    else:
        assert vm_file(vm, path).read_text() == host


@EDITS
def test_a_vm_edit_to_a_placed_file_while_the_push_is_applied_stays_the_vms(launched, edit):
    repo, vm = launched
    path, host, content = pushed_and_edited(repo, edit)
    host_writes(repo, path, host)

    def edit_in_the_vm():
        as_the_push_left_it(vm, path, host)
        vm_file(vm, path).write_text(content)
    err = held_push(repo, vm, edit_in_the_vm)
    assert b"the VM changed %s while the push was applied" % path.encode() in err, err
    the_edit_is_the_vms_own(repo, vm, path, host, content)


@EDITS
def test_a_vm_edit_to_a_placed_file_before_a_killed_push_is_finished_stays_the_vms(launched, edit):
    repo, vm = launched
    path, host, content = pushed_and_edited(repo, edit)
    install(repo, vm, None, env={"GIT_SLICER_TEST_CRASH_AT": "agent:push-applied"})
    host_writes(repo, path, host)
    assert repo.slicer("push", vm, check=False).returncode != 0
    uninstall(repo)
    as_the_push_left_it(vm, path, host)             # applied, not yet recorded
    vm_file(vm, path).write_text(content)
    the_edit_is_the_vms_own(repo, vm, path, host, content)      # its status finishes the push first


def stays_the_vms(repo, vm, path: str, content) -> None:
    """status names `path` as the VM's change, and a push of other host work leaves it as is."""
    status = repo.slicer_json("status", vm)
    assert status["vm_side"]["changed_since_sync"] == [path], status
    repo.write("src/app.py", "print('more host work')\n")
    repo.slicer("push", vm, check=False)
    if content is None:
        assert not vm_file(vm, path).exists()
    else:
        assert vm_file(vm, path).read_text() == content


def test_a_vm_edit_to_a_file_the_commit_changed_stays_the_vms(launched):
    """git writes the commit's files (restore, read-tree), not the host's stream."""
    repo, vm = launched
    repo.write("README.md", "# project, new commit\n")
    repo.commit("readme")
    err = held_push(repo, vm, lambda: vm_file(vm, "README.md").write_text("VM work\n"))
    assert b"the VM changed README.md while the push was applied" in err, err
    stays_the_vms(repo, vm, "README.md", "VM work\n")


def test_a_vm_edit_to_a_file_the_commit_changed_before_a_killed_push_is_finished_stays_the_vms(launched):
    repo, vm = launched
    repo.write("README.md", "# project, new commit\n")
    repo.commit("readme")
    install(repo, vm, None, env={"GIT_SLICER_TEST_CRASH_AT": "agent:push-applied"})
    assert repo.slicer("push", vm, check=False).returncode != 0
    uninstall(repo)
    vm_file(vm, "README.md").write_text("VM work\n")
    stays_the_vms(repo, vm, "README.md", "VM work\n")


def test_a_file_the_commit_removed_and_the_vm_puts_back_stays_the_vms(launched):
    repo, vm = launched
    repo.git("rm", "-q", "src/lib.py")
    repo.commit("drop lib")
    err = held_push(repo, vm, lambda: vm_file(vm, "src/lib.py").write_text("VM work\n"))
    assert b"the VM changed src/lib.py while the push was applied" in err, err
    stays_the_vms(repo, vm, "src/lib.py", "VM work\n")


@pytest.mark.parametrize("host", ["kept", "removed"])
def test_an_untracked_file_the_push_keeps_or_removes_stays_the_vms_once_changed(launched, host):
    """notes.txt was pushed before. Kept: the same on both sides, reused and never touched.
    Removed: deleted on the host, so the push removes it and the VM puts it back."""
    repo, vm = launched
    repo.write("notes.txt", "host notes\n")
    repo.slicer("push", vm)
    if host == "kept":
        repo.write("README.md", "# more host work\n")
    else:
        (repo.path / "notes.txt").unlink()
    err = held_push(repo, vm, lambda: vm_file(vm, "notes.txt").write_text("VM notes\n"))
    assert b"the VM changed notes.txt while the push was applied" in err, err
    stays_the_vms(repo, vm, "notes.txt", "VM notes\n")


def nothing_changed_in_the_vm(repo, vm, err) -> None:
    assert b"while the push was applied" not in err, err
    assert repo.slicer_json("status", vm)["vm_side"]["changed_since_sync"] == []
    repo.write("README.md", "# once more\n")
    result = repo.slicer("push", vm, check=False)
    assert result.returncode == 0 and b"while the push was applied" not in result.stderr, result.stderr
    status = repo.slicer_json("status", vm)
    assert status["vm_side"]["changed_since_sync"] == [] and status["host"]["changed_since_sync"] == [], status


def test_conversions_modes_and_links_are_never_taken_for_vm_changes(repo):
    repo.write(".gitattributes", "*.txt text eol=crlf\n*.dat filter=rot\n*.auto text=auto\n")
    repo.git("config", "filter.rot.clean", "tr a-z n-za-m")           # a filter the VM lacks
    repo.git("config", "filter.rot.smudge", "tr a-z n-za-m")
    repo.write("a.txt", "one\ntwo\n")
    repo.write("b.dat", "hello\n")
    repo.write("c.auto", "x\r\ny\r\n")
    repo.commit("attributes")
    vm = repo.slicer_json("push", "--launch")["vm"]
    repo.write("a.txt", "one\r\nthree\r\n")
    repo.write("b.dat", "hello again\n")
    repo.write("c.auto", "x\r\nz\r\n")
    (repo.path / "bin/run").chmod(0o644)
    repo.write("src/app.py", "staged\n")
    repo.git("add", "src/app.py")
    repo.write("src/app.py", "staged then edited\n")
    (repo.path / "app-link").unlink()
    os.symlink("README.md", repo.path / "app-link")
    repo.write("new.txt", "new\n")
    result = repo.slicer("push", vm, check=False)
    assert result.returncode == 0, result.stderr
    nothing_changed_in_the_vm(repo, vm, result.stderr)


def test_a_sparse_vm_ignored_files_and_force_are_never_taken_for_vm_changes(repo):
    repo.write(".gitignore", "*.log\n")
    repo.write("docs/guide.md", "guide\n")
    repo.commit("docs")
    vm = repo.slicer_json("push", "--launch")["vm"]
    repo.vm_git(vm, "sparse-checkout", "set", "--no-cone", "/src/", "/bin/", "/.gitignore")
    repo.write("docs/guide.md", "guide, edited on the host\n")       # outside the VM's sparse set
    repo.write("build.log", "ignored\n")
    result = repo.slicer("push", "--include-ignored", vm, check=False)
    assert result.returncode == 0 and b"while the push was applied" not in result.stderr, result.stderr
    vm_file(vm, "src/app.py").write_text("VM work\n")
    repo.write("src/lib.py", "VALUE = 3\n")
    result = repo.slicer("push", "--force", vm, check=False)
    assert result.returncode == 0 and b"while the push was applied" not in result.stderr, result.stderr
    assert repo.slicer_json("status", vm)["vm_side"]["changed_since_sync"] == []



def test_a_vm_commit_made_while_the_push_streams_stops_the_push(launched):
    """The VM's git does not take the agent's lock: a commit there while the pack comes in
    would be moved off its branch by the push (left in the reflog alone). The push stops with
    nothing written, and the next one asks for a pull first."""
    repo, vm = launched
    repo.write("README.md", "# the host's commit\n")
    repo.commit("host")
    made = {}

    def commit_in_the_vm():
        vm_file(vm, "src/app.py").write_text("print('the VM agent')\n")
        repo.vm_git(vm, "commit", "-q", "-am", "the VM's own commit")
        made["commit"] = repo.vm_git(vm, "rev-parse", "HEAD").strip()
    err = held_push(repo, vm, commit_in_the_vm, at="agent:push-received", succeeds=False)
    assert b"changed since it was inspected" in err, err
    vm_commit = made["commit"]
    assert repo.vm_git(vm, "rev-parse", "HEAD").strip() == vm_commit
    again = repo.slicer("push", vm, check=False)
    assert again.returncode != 0 and b"new commits" in again.stderr, again.stderr
    assert repo.vm_git(vm, "rev-parse", "HEAD").strip() == vm_commit


# The push's state of the VM is read before its streams come in (a large push streams for
# minutes). What the VM changes meanwhile is checked for after them, whether that state came
# from a full scan (a fresh agent, as `held_push` starts; a cold agent over ssh or exec) or
# from a warm agent's memory: a change to a path the push would write stops it.
def edited_while_streaming(repo, vm, path: str, content: str) -> bytes:
    err = held_push(repo, vm, lambda: vm_file(vm, path).write_text(content), at="agent:push-received",
                    succeeds=False)
    assert b"changed since it was inspected" in err, err
    assert vm_file(vm, path).read_text() == content
    return err


@pytest.mark.parametrize("host", ["commit", "uncommitted"])
def test_a_vm_edit_made_while_the_streams_come_in_stops_the_push(launched, host):
    """The file the push writes: one the host's commit changes, or one it sends as a file."""
    repo, vm = launched
    repo.write("src/app.py", "print('the host')\n")
    if host == "commit":
        repo.commit("host")
    edited_while_streaming(repo, vm, "src/app.py", "print('VM work')\n")
    stays_the_vms(repo, vm, "src/app.py", "print('VM work')\n")


def test_a_vm_edit_anywhere_stops_a_push_that_checks_out_every_path(launched):
    """A VM holding pushed uncommitted work moves to a new commit with `read-tree --reset`,
    which rewrites every tracked file that differs from its index entry: an edit to a file the
    push never names is checked for too."""
    repo, vm = launched
    repo.write("notes.txt", "host notes\n")
    repo.slicer("push", vm)
    repo.write("README.md", "# the host's commit\n")
    repo.commit("host")
    edited_while_streaming(repo, vm, "src/lib.py", "VM work\n")
    stays_the_vms(repo, vm, "src/lib.py", "VM work\n")


@pytest.mark.parametrize("vm_edits", [True, False])
def test_a_push_that_changes_what_git_ignores_checks_for_vm_edits_under_the_new_rules(launched, vm_edits):
    """The host's own ignore patterns travel with the push, and the VM's scan changes with
    them: the check after the streams compares with the VM read again under the new rules, so
    an edit meanwhile stops the push and no edit never looks like one."""
    repo, vm = launched
    if not vm_edits:        # a file both scans see, the VM's before the push and after: untracked, then ignored
        repo.write("scratch.tmp", "host scratch\n")
        repo.slicer("push", vm)
    (repo.path / ".git" / "info" / "exclude").write_text("*.tmp\n")
    repo.write("README.md", "# the host's commit\n")
    repo.commit("host")
    if vm_edits:
        edited_while_streaming(repo, vm, "src/app.py", "print('VM work')\n")
        stays_the_vms(repo, vm, "src/app.py", "print('VM work')\n")
    else:
        nothing_changed_in_the_vm(repo, vm, held_push(repo, vm, lambda: None, at="agent:push-received"))
