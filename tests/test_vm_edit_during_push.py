"""A VM edit to a file a push has just placed is the VM's change, never the agreed state.

The agent scans the paths a push touched after applying it, and the host takes that scan as the
state both sides agree on. A VM user (or agent) who edits a placed file between the placement
and that scan, or before a killed push is finished, must not have the edit agreed: a later push
would then overwrite it without a word (agent/transaction.py, _left_by_push)."""

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


def as_the_push_left_it(vm, path: str, host) -> None:
    if host is None:
        assert not vm_file(vm, path).exists()
    else:
        assert vm_file(vm, path).read_text() == host


@EDITS
def test_a_vm_edit_to_a_placed_file_while_the_push_is_applied_stays_the_vms(launched, edit):
    repo, vm = launched
    path, host, content = pushed_and_edited(repo, edit)
    hold = vm_home(vm) / "hold"
    hold.mkdir()
    install(repo, vm, None, env={"GIT_SLICER_TEST_HOLD_AT": "agent:push-applied",
                                 "GIT_SLICER_TEST_HOLD_DIR": guest_home(vm) + "/hold"})
    host_writes(repo, path, host)
    push = subprocess.Popen([*SLICER, "push", vm], cwd=repo.path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (hold / "held").exists():
        assert push.poll() is None and time.monotonic() < deadline, push.communicate()
        time.sleep(0.02)
    as_the_push_left_it(vm, path, host)
    vm_file(vm, path).write_text(content)
    (hold / "go").touch()
    _, err = push.communicate(timeout=60)
    assert push.returncode == 0, err
    assert b"the VM changed %s while the push was applied" % path.encode() in err, err
    uninstall(repo)
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
