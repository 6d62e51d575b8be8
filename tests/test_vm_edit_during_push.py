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

VM_EDIT = "print('edited in the VM while the push was applied')\n"
# An edit, or the file put back as committed (then git in the VM calls it clean: only its bytes
# tell it from what the push placed)
EDITS = pytest.mark.parametrize("edit", ["edited", "reverted"])


def vm_edit(repo, edit: str) -> str:
    return VM_EDIT if edit == "edited" else repo.git("show", "HEAD:src/app.py")


def vm_file(vm, rel):
    return next(vm_home(vm).glob("*/" + rel))


def the_edit_is_the_vms_own(repo, vm, content: str) -> None:
    """status reports the edit as the VM's, a push of another host version refuses, the VM
    keeps its bytes, and the pull that was asked for brings them home."""
    status = repo.slicer_json("status", vm)
    assert status["vm_side"]["changed_since_sync"] == ["src/app.py"], status
    repo.write("src/app.py", "print('the host, once more')\n")
    result = repo.slicer("push", vm, check=False)
    assert result.returncode != 0 and b"src/app.py" in result.stderr, result.stderr
    assert vm_file(vm, "src/app.py").read_text() == content
    repo.write("src/app.py", "print('the host')\n")        # back to what was pushed
    repo.slicer("pull", vm)
    assert (repo.path / "src" / "app.py").read_text() == content


@EDITS
def test_a_vm_edit_to_a_placed_file_while_the_push_is_applied_stays_the_vms(launched, edit):
    repo, vm = launched
    hold = vm_home(vm) / "hold"
    hold.mkdir()
    install(repo, vm, None, env={"GIT_SLICER_TEST_HOLD_AT": "agent:push-applied",
                                 "GIT_SLICER_TEST_HOLD_DIR": guest_home(vm) + "/hold"})
    repo.write("src/app.py", "print('the host')\n")
    push = subprocess.Popen([*SLICER, "push", vm], cwd=repo.path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (hold / "held").exists():
        assert push.poll() is None and time.monotonic() < deadline, push.communicate()
        time.sleep(0.02)
    placed = vm_file(vm, "src/app.py")
    assert placed.read_text() == "print('the host')\n"
    placed.write_text(vm_edit(repo, edit))
    (hold / "go").touch()
    _, err = push.communicate(timeout=60)
    assert push.returncode == 0, err
    assert b"the VM changed src/app.py while the push was applied" in err, err
    uninstall(repo)
    the_edit_is_the_vms_own(repo, vm, vm_edit(repo, edit))


@EDITS
def test_a_vm_edit_to_a_placed_file_before_a_killed_push_is_finished_stays_the_vms(launched, edit):
    repo, vm = launched
    install(repo, vm, None, env={"GIT_SLICER_TEST_CRASH_AT": "agent:push-applied"})
    repo.write("src/app.py", "print('the host')\n")
    assert repo.slicer("push", vm, check=False).returncode != 0
    uninstall(repo)
    placed = vm_file(vm, "src/app.py")
    assert placed.read_text() == "print('the host')\n"      # applied, not yet recorded
    placed.write_text(vm_edit(repo, edit))
    the_edit_is_the_vms_own(repo, vm, vm_edit(repo, edit))      # its status finishes the push first
