"""A large VM index is kept split (agent/transaction.py, _split_if_large): each push then
writes only the entries it changed. What must hold is what held before: git in the VM reads
its index, the VM's status and index equal the host's after every push (small, and one that
rewrites more than a fifth of the entries, after which git wrote the private index whole), a
commit in the VM comes home, and a push killed around the split is finished by the next
request with nothing left over."""

from __future__ import annotations

import pytest

from git_slicer.agent.transaction import SPLIT_ENTRIES
from hostile_agent import install, uninstall, vm_home

FILES = SPLIT_ENTRIES + 500


def own_entries(vm) -> int:
    """The entry count in the VM's .git/index file itself (a split index counts only its own)."""
    index = next(vm_home(vm).glob("*/.git/index")).read_bytes()[:12]
    assert index[:4] == b"DIRC"
    return int.from_bytes(index[8:12], "big")


def is_split(repo, vm) -> bool:
    """Whether git in the VM reads its .git/index through a shared file. (Not the own part's
    size: entries written in the same second as the index stay there, racily clean.)"""
    return "shared/do_read_index" in repo.vm_sh(vm, "GIT_TRACE2_PERF=1 git ls-files 2>&1 >/dev/null")


def shared_files(vm) -> list:
    return sorted(p.name for p in vm_home(vm).glob("*/.git/sharedindex.*"))


@pytest.fixture
def large(repo):
    for i in range(FILES):
        repo.write("d%03d/f%05d.txt" % (i % 200, i), "file %d\n" % i)
    repo.commit("many files")
    return repo


def assert_same(repo, vm):
    assert repo.vm_git(vm, "rev-parse", "HEAD") == repo.git("rev-parse", "HEAD")
    assert repo.vm_git(vm, "ls-files", "-s") == repo.git("ls-files", "-s")
    assert repo.vm_status(vm) == repo.status()


def test_a_large_vm_index_is_split_and_stays_right_through_pushes_and_a_vm_commit(large):
    repo = large
    vm = repo.slicer_json("push", "--launch")["vm"]
    assert is_split(repo, vm), "the first push left the index whole"
    assert_same(repo, vm)
    repo.write("d000/f00000.txt", "committed\n")
    repo.commit("one file")
    repo.write("d001/f00001.txt", "dirty\n")
    repo.write("new.txt", "untracked\n")
    repo.slicer("push", vm)
    assert is_split(repo, vm)
    assert_same(repo, vm)
    for i in range(0, FILES, 3):           # a third of the entries: git writes the private index whole
        repo.write("d%03d/f%05d.txt" % (i % 200, i), "rewritten %d\n" % i)
    repo.commit("a third")
    repo.slicer("push", vm)
    assert is_split(repo, vm), "the index was left whole after a large push"
    assert_same(repo, vm)
    repo.vm_sh(vm, "echo vm > d002/f00002.txt && git commit -qam 'in the vm'")    # git writes .git/index itself
    repo.slicer("pull", vm)
    assert (repo.path / "d002" / "f00002.txt").read_text() == "vm\n"
    assert_same(repo, vm)
    repo.vm_git(vm, "fsck", "--no-dangling")


@pytest.mark.parametrize("phase", ["agent:push-split", "agent:push-applied"])
def test_a_first_push_killed_around_the_split_is_finished_by_the_next_request(large, phase):
    """The first push writes the whole index (a checkout), so it is the one that splits it."""
    repo = large
    vm = repo.slicer_json("vm", "launch")["name"]
    repo.write("notes.txt", "untracked\n")
    install(repo, vm, None, env={"GIT_SLICER_TEST_CRASH_AT": phase})
    proc = repo.slicer("push", vm, check=False)
    uninstall(repo)
    assert proc.returncode != 0, "the push did not reach %s" % phase
    repo.slicer("push", vm)         # up to date: finished by the agent, before the push's own steps
    assert_same(repo, vm)
    assert is_split(repo, vm)
    assert repo.vm_sh(vm, "cd .git && find . -name '*.lock' -o -name 'slicer-push'") == ""
    assert repo.vm_git(vm, "for-each-ref", "refs/slicer/kept/") == ""
    repo.vm_git(vm, "fsck", "--no-dangling")


def test_a_shared_index_git_expires_while_a_killed_push_waits_does_not_stop_its_recovery(large):
    """git deletes a shared file no index names once it is old (splitIndex.sharedIndexExpire);
    the journal's copy of the old index may still name one. Here the VM's own git writes a new
    index and the old shared file goes while a killed push waits: the next request still
    finishes the push, and git in the VM reads the index it installed."""
    repo = large
    vm = repo.slicer_json("push", "--launch")["vm"]
    repo.write("d000/f00000.txt", "committed\n")
    repo.commit("one file")
    repo.write("d001/f00001.txt", "dirty\n")
    install(repo, vm, None, env={"GIT_SLICER_TEST_CRASH_AT": "agent:push-applying"})
    proc = repo.slicer("push", vm, check=False)
    uninstall(repo)
    assert proc.returncode != 0, "the push did not reach agent:push-applying"
    old = shared_files(vm)
    # The VM's git writes its index whole, and the shared file no index names now expires (by
    # hand: git waits two weeks).
    repo.vm_sh(vm, "git update-index --no-split-index && rm .git/sharedindex.*")
    assert old and not shared_files(vm)
    repo.slicer("push", vm)
    assert_same(repo, vm)
    assert repo.vm_git(vm, "for-each-ref", "refs/slicer/kept/") == ""
    repo.vm_git(vm, "fsck", "--no-dangling")


def test_a_vm_that_turned_split_index_off_keeps_its_index_whole(large):
    """`core.splitIndex=false` in the VM is the VM's choice (git would write the index whole
    again at its next write): a push never splits it then."""
    repo = large
    vm = repo.slicer_json("vm", "launch")["name"]
    repo.slicer("exec", vm, "--cwd", ".", "--", "git", "config", "--global", "core.splitIndex", "false")
    repo.slicer("push", vm)
    assert own_entries(vm) >= FILES and not is_split(repo, vm)
    assert_same(repo, vm)
