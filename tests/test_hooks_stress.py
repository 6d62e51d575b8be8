"""Many VMs on one worktree, driven by real `git commit FILE` hooks, with manual pulls in between:
background pushes racing partial commits and pulls never wedge a VM (issue: one VM refused every
later push while pull found nothing to do).

The suite runs the full size, 8 VMs x 200 single-file commits (about 30 s on 2 idle cores);
GIT_SLICER_STRESS=small runs 3 VMs x 30 commits while iterating.
"""

from __future__ import annotations

import os

from test_hooks import log_lines, settle

SMALL = os.environ.get("GIT_SLICER_STRESS") == "small"
VMS, COMMITS, PULL_EVERY = (3, 30, 5) if SMALL else (8, 200, 10)


def test_background_pushes_racing_partial_commits_and_pulls(repo):
    for i in range(20):
        repo.write("tracked/t%02d.txt" % i, "v0\n")
    repo.commit("files to commit one by one")
    vms = [repo.slicer_json("push", "--launch")["vm"] for _ in range(VMS)]
    repo.slicer("hooks", "install")
    for n in range(COMMITS):
        repo.write("README.md", "dirty %d\n" % n)                # other files stay dirty...
        repo.write("scratch/notes.txt", "untracked %d\n" % n)    # ...and untracked
        path = "tracked/t%02d.txt" % (n % 20)
        repo.write(path, "commit %d\n" % n)
        repo.git("commit", "-qm", "commit %d" % n, path)         # a partial commit: index.lock, a temp index
        if n % PULL_EVERY == PULL_EVERY - 1:
            vm = vms[(n // PULL_EVERY) % VMS]
            before = repo.fingerprint(skip=(".git/",))
            repo.slicer("pull", vm)                              # waits for a running background push
            assert repo.fingerprint(skip=(".git/",)) == before, "pull from %s changed the host" % vm
    settle(repo, timeout=600)
    head, status = repo.git("rev-parse", "HEAD"), repo.status()
    for vm in vms:
        assert repo.vm_git(vm, "rev-parse", "HEAD") == head, vm
        assert repo.vm_status(vm) == status, vm
    assert log_lines(repo, ": refused:") == []
    # A file rewritten while a push streams it aborts that push (the next one sends it): the
    # only failure allowed.
    assert [line for line in log_lines(repo, ": failed:") if "changed while it was being sent" not in line] == []
    for vm in vms:                                               # and a plain push still goes through
        repo.slicer("push", vm)
