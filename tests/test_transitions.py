"""Push makes the VM equal the host through every file/directory/symlink transition, and a pull
afterwards touches nothing neither side changed (real repos, real agents in local VMs)."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

TREE = r"""
import hashlib, os, sys
out = []
for root, dirs, files in os.walk("."):
    if root == ".":
        dirs[:] = [d for d in dirs if d != ".git"]
    for name in sorted(files) + sorted(d for d in dirs if os.path.islink(os.path.join(root, d))):
        full = os.path.join(root, name)
        if os.path.islink(full):
            out.append("%s L %s" % (full, os.readlink(full)))
        else:
            out.append("%s %o %s" % (full, os.stat(full).st_mode & 0o777,
                                     hashlib.sha1(open(full, "rb").read()).hexdigest()))
    for d in dirs:
        if not os.listdir(os.path.join(root, d)) and not os.path.islink(os.path.join(root, d)):
            out.append("%s/ empty" % os.path.join(root, d))
print("\n".join(sorted(out)))
"""


def tree(cwd) -> str:
    """Every file, symlink and empty directory of a worktree (.git left out), with contents."""
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-c", TREE], cwd=cwd, stdout=subprocess.PIPE, check=True).stdout.decode()


def vm_tree(repo, vm) -> str:
    return repo.slicer("exec", vm, "--", "python3", "-c", TREE).stdout.decode()


def host_view(repo):
    return (repo.git("rev-parse", "HEAD").strip(), repo.git("ls-files", "-s"), tree(repo.path))


def push_and_check(repo, vm):
    repo.slicer("push", vm)
    assert repo.vm_status(vm) == repo.status()
    assert vm_tree(repo, vm) == tree(repo.path)
    before = host_view(repo)
    repo.slicer("pull", vm)
    assert host_view(repo) == before, "a pull changed the host after a plain push"


def test_directory_becomes_a_file_and_back(launched):
    """The issue's case: `src/` replaced by a file `src`, pushed, restored, pushed: the agent used
    to remove src/app.py in the VM, and the next pull deleted it on the host."""
    repo, vm = launched
    shutil.rmtree(repo.path / "src")
    repo.write("src", "now a file\n")
    push_and_check(repo, vm)
    os.unlink(repo.path / "src")
    repo.git("checkout", "--", "src")
    assert (repo.path / "src" / "app.py").read_text() == "print('hello')\n"
    push_and_check(repo, vm)
    assert (repo.path / "src" / "app.py").read_text() == "print('hello')\n"


def test_file_becomes_a_directory_and_back(launched):
    repo, vm = launched
    os.unlink(repo.path / "README.md")
    repo.write("README.md/inner.txt", "inside\n")
    push_and_check(repo, vm)
    shutil.rmtree(repo.path / "README.md")
    repo.git("checkout", "--", "README.md")
    push_and_check(repo, vm)


def test_symlinks_become_files_and_directories_and_back(launched):
    repo, vm = launched
    os.unlink(repo.path / "app-link")
    repo.write("app-link", "a regular file now\n")                 # symlink -> file
    os.unlink(repo.path / "src" / "lib.py")
    os.symlink("../README.md", repo.path / "src" / "lib.py")      # file -> symlink
    shutil.rmtree(repo.path / "bin")
    os.symlink("src", repo.path / "bin")                           # directory -> symlink
    push_and_check(repo, vm)
    os.unlink(repo.path / "app-link")
    repo.write("app-link/deeper/x.txt", "x\n")                     # file -> directory
    os.unlink(repo.path / "bin")
    repo.write("bin/other", "other\n")                             # symlink -> directory
    push_and_check(repo, vm)
    shutil.rmtree(repo.path / "app-link")
    shutil.rmtree(repo.path / "bin")
    os.unlink(repo.path / "src" / "lib.py")
    repo.git("checkout", "--", ".")
    push_and_check(repo, vm)


def test_committed_transitions_with_dirty_files_kept(launched):
    """The host commits a directory->file swap while the VM keeps dirty and untracked files it
    already has (the host does not resend those)."""
    repo, vm = launched
    repo.write("README.md", "dirty, already in the VM\n")
    repo.write("notes/todo.txt", "untracked, already in the VM\n")
    repo.slicer("push", vm)
    repo.git("rm", "-rq", "src")
    repo.write("src", "a file in the commit\n")
    repo.git("add", "src")
    repo.git("commit", "-qm", "src is a file")
    push_and_check(repo, vm)
    repo.git("rm", "-q", "src")
    repo.write("src/app.py", "back\n")
    repo.git("add", "src")
    repo.git("commit", "-qm", "src is a directory")
    push_and_check(repo, vm)
    assert repo.vm_sh(vm, "cat README.md notes/todo.txt") == "dirty, already in the VM\nuntracked, already in the VM\n"


def test_a_push_that_meets_a_pull_waits_and_sends_the_state_after_it(launched):
    """A pull holds the worktree lock exclusively while it moves the branch; a push started
    meanwhile must send the HEAD of after the pull, not the one it saw when it started (it used
    to read HEAD before taking the lock and moved the VM backwards). The test holds the lock and
    moves the branch itself, exactly where a pull would."""
    import fcntl
    import subprocess
    import time
    from conftest import SLICER
    repo, vm = launched
    lock = repo.git("rev-parse", "--path-format=absolute", "--git-path", "slicer/worktree.flock").strip()
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        proc = subprocess.Popen(SLICER + ["push", vm], cwd=repo.path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        while proc.poll() is None and not _has_open(proc.pid, lock):
            time.sleep(0.02)                     # until the push waits for the lock
        repo.write("README.md", "committed while the push waited\n")
        new = repo.commit("during the pull")
    finally:
        os.close(fd)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert repo.vm_git(vm, "rev-parse", "HEAD").strip() == new
    assert repo.vm_status(vm) == repo.status()


def _has_open(pid: int, path: str) -> bool:
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, fd)) == path:
                return True
        except OSError:
            pass
    return False


def test_kept_files_with_control_characters_in_their_names(launched):
    """Files the VM already has are not sent again; a name git can track with a newline or a
    tab is kept safely too (it cannot be asked about line by line)."""
    repo, vm = launched
    repo.write("odd\nname.txt", "tracked\n")
    repo.commit("odd name")
    repo.slicer("push", vm)
    repo.write("odd\nname.txt", "dirty, already in the VM\n")
    repo.write("tab\there.txt", "untracked, already in the VM\n")
    repo.slicer("push", vm)
    repo.write("README.md", "commit something else\n")
    repo.git("commit", "-qm", "other", "README.md")
    push_and_check(repo, vm)
