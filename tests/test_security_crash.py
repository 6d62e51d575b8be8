"""Kill the host command or the agent at every named phase of push and pull
(GIT_SLICER_TEST_CRASH_AT=<phase> makes that process os._exit at once, no cleanup). Afterwards:
no stale .lock files; the host branch, index and worktree are entirely old or entirely new
(a pull killed while writing leaves a journal, and the next command rolls it back before
anything else); and the next push or pull completes.
"""

import os

import pytest

from hostile_agent import install, uninstall

PULL_HOST = ["pull:recovered", "pull:pack-received", "pull:validated", "pull:migrating", "pull:objects-in",
             "pull:staged", "pull:ref-moved", "pull:writing", "pull:files-written", "pull:index-written",
             "pull:imported"]
PULL_AGENT = ["agent:fetch", "agent:files"]
PUSH_HOST = ["push:pack-sent", "push:before-link"]
PUSH_AGENT = ["agent:push-received", "agent:push-applying"]


def locks(repo):
    return [os.path.join(root, n) for root, _, files in os.walk(repo.path / ".git") for n in files
            if n.endswith(".lock")]


def snap(repo):
    """What the user sees: branch tip, index, worktree bytes."""
    return (repo.git("rev-parse", "refs/heads/main").strip(), repo.git("ls-files", "-s"),
            repo.fingerprint(skip=(".git/",)))


def crash_env(phase):
    return {**os.environ, "GIT_SLICER_TEST_CRASH_AT": phase}


def journal(repo):
    return (repo.path / ".git" / "slicer" / "pull-journal.json").exists()


@pytest.mark.parametrize("phase", PULL_HOST + PULL_AGENT)
def test_pull_killed_at_every_phase(launched, phase):
    repo, vm = launched
    repo.vm_sh(vm, "echo more >> README.md && git rm -q src/lib.py && echo n > new.txt && git add -A && "
                   "git commit -qm vm && echo wip >> src/app.py && echo u > untracked.txt && ln -s README.md l2")
    old = snap(repo)
    if phase.startswith("agent:"):
        install(repo, vm, None, env={"GIT_SLICER_TEST_CRASH_AT": phase})
        proc = repo.slicer("pull", vm, check=False)
        uninstall(repo)
    else:
        proc = repo.slicer("pull", vm, check=False, env=crash_env(phase))
    assert proc.returncode != 0, "the pull did not reach phase %s" % phase
    assert locks(repo) == []
    crashed, left_journal = snap(repo), journal(repo)
    # The next command first recovers; stop it right there to see what recovery left.
    proc = repo.slicer("pull", vm, check=False, env=crash_env("pull:recovered"))
    assert proc.returncode == 99
    recovered = snap(repo)
    assert not journal(repo) and locks(repo) == []
    repo.slicer("pull", vm)
    new = snap(repo)
    assert new != old
    assert repo.git("rev-parse", "HEAD") == repo.vm_git(vm, "rev-parse", "HEAD")
    assert (repo.path / "src" / "app.py").read_text().endswith("wip\n")
    assert (repo.path / "untracked.txt").read_text() == "u\n" and os.readlink(repo.path / "l2") == "README.md"
    assert recovered in (old, new)
    assert crashed in (old, new) or left_journal, "killed at %s: a mixed state with no journal" % phase
    assert not [n for n in os.listdir(repo.path) if n.startswith(".slicer-")]
    assert not [n for n in os.listdir(repo.path / ".git") if n.startswith("slicer-pull-")]
    assert not [n for n in os.listdir(repo.path / ".git" / "objects") if n.startswith("incoming-")]


@pytest.mark.parametrize("phase", PUSH_HOST + PUSH_AGENT)
def test_push_killed_at_every_phase(launched, phase):
    repo, vm = launched
    repo.write("README.md", "changed\n")
    repo.commit("host")
    repo.write("src/app.py", "print('wip')\n")
    repo.write("notes.txt", "untracked\n")
    before = repo.fingerprint(skip=(".git/slicer",))
    if phase.startswith("agent:"):
        install(repo, vm, None, env={"GIT_SLICER_TEST_CRASH_AT": phase})
        before = repo.fingerprint(skip=(".git/slicer",))
        proc = repo.slicer("push", vm, check=False)
        uninstall(repo)
        before_cfg = True
    else:
        proc = repo.slicer("push", vm, check=False, env=crash_env(phase))
        before_cfg = False
    assert proc.returncode != 0, "the push did not reach phase %s" % phase
    assert locks(repo) == []
    if not before_cfg:
        assert repo.fingerprint(skip=(".git/slicer",)) == before
    repo.slicer("push", vm)
    assert repo.vm_status(vm) == repo.status()
    assert repo.vm_git(vm, "rev-parse", "HEAD") == repo.git("rev-parse", "HEAD")
