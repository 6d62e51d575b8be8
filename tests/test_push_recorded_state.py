"""The state a push records as agreed is exactly what a full scan of the VM returns afterwards.

After applying a push, the agent scans only the paths the push touched (the old and new overlays,
what the commit changed) and takes every other path as clean (agent/transaction.py,
touched_paths). These tests push into real repositories with eol attributes, an LFS-like
filter, exec bits, symlinks, a sparse checkout, sha256 objects, a submodule, and pushes that
change what git ignores or converts, then compare the VM's record (.git/slicer-applied.json,
what the host stores as agreed) with a full scan by the agent's own code, and check that the
next push and status see nothing changed.
"""

from __future__ import annotations

import json
import os

from conftest import Repo, new_repo
from test_real_repos import crlf_repo, lfs_repo

# The agent's full scan, run inside the VM by the agent's own code (the local sandbox has it at
# /opt/git-slicer), without the lock: these tests do nothing else meanwhile.
FULL_SCAN = ("import sys, json; sys.path.insert(0, '/opt/git-slicer'); "
             "from git_slicer.agent.server import Repo; s = Repo('.').state(); "
             "print(json.dumps({'head': s['head'], 'branch': s['branch'], 'overlay': s['overlay']}))")


def recorded_and_scanned(repo: Repo, vm: str) -> tuple:
    record = json.loads(repo.vm_sh(vm, "cat .git/slicer-applied.json"))
    scanned = json.loads(repo.slicer("exec", vm, "--", "python3", "-S", "-c", FULL_SCAN).stdout)
    return {k: record[k] for k in ("head", "branch", "overlay")}, scanned


def push_and_compare(repo: Repo, vm: str, *args) -> dict:
    """Push, then: the recorded state equals a full scan, and a second push and status agree
    that nothing changed since."""
    result = repo.slicer_json("push", vm, *args)
    assert result["up_to_date"] is False
    recorded, scanned = recorded_and_scanned(repo, vm)
    assert recorded == scanned
    assert recorded["head"] == repo.git("rev-parse", "HEAD").strip()
    status = repo.slicer_json("status", vm)
    assert status["vm_side"]["changed_since_sync"] == [], status
    return recorded


def dirty_everything(repo: Repo, tag: str) -> None:
    """A modified, a new, a deleted and a staged-then-edited file, an exec bit and a symlink."""
    root = repo.path
    repo.write("README.md", "# project %s\n" % tag)
    repo.write("new-%s.txt" % tag, "new %s\n" % tag)
    repo.write("deep/dir/%s.txt" % tag, "deep\n")
    repo.write("src/app.py", "print('%s')\n" % tag)
    repo.git("add", "src/app.py")
    repo.write("src/app.py", "print('%s, edited')\n" % tag)
    os.chmod(root / "bin" / "run", 0o644 if os.stat(root / "bin" / "run").st_mode & 0o100 else 0o755)
    link = root / ("link-" + tag)
    os.symlink("README.md", link)
    if (root / "src" / "lib.py").exists():
        os.unlink(root / "src" / "lib.py")


def test_exec_bits_symlinks_and_a_dirty_overlay_record_what_a_scan_finds(repo):
    vm = repo.slicer_json("push", "--launch")["vm"]
    # A commit that flips an exec bit, retargets the symlink and adds a file; a clean worktree.
    os.chmod(repo.path / "bin" / "run", 0o644)
    os.unlink(repo.path / "app-link")
    os.symlink("README.md", repo.path / "app-link")
    repo.write("added.txt", "added\n")
    repo.commit("host: modes and links")
    assert push_and_compare(repo, vm)["overlay"] == {"index": {}, "files": {}}
    # Then every kind of uncommitted change on top of one more commit.
    repo.write("later.txt", "later\n")
    repo.commit("host: later")
    dirty_everything(repo, "one")
    overlay = push_and_compare(repo, vm)["overlay"]
    assert "src/app.py" in overlay["index"] and "link-one" in overlay["files"]
    # The VM's own edits are replaced by --force: its untracked files and changes go.
    repo.vm_sh(vm, "echo vm >> README.md && echo vm > vm-only.txt && mkdir -p vmdir && echo x > vmdir/x")
    repo.commit("host: take the overlay")
    dirty_everything(repo, "two")
    push_and_compare(repo, vm, "--force")


def test_a_clean_vm_follows_commits_of_every_shape_path_by_path(repo):
    """A clean VM moves to each new commit by restoring only the paths it changes (or by the
    two-way merge where restore refuses: a file where a directory was). After each push the VM's
    index and files are the commit's, no directory a commit emptied is left, nothing ran the
    VM's post-checkout hook, and the record is what a full scan finds."""
    vm = repo.slicer_json("push", "--launch")["vm"]
    repo.vm_sh(vm, "printf '#!/bin/sh\\ntouch $HOME/hook-ran\\n' > .git/hooks/post-checkout && "
                   "chmod +x .git/hooks/post-checkout")
    steps = [
        lambda: repo.write("src/app.py", "print('edited')\n"),
        lambda: repo.write("deep/a/b/c.txt", "deep\n"),
        lambda: repo.git("rm", "-rq", "deep"),                                    # empties deep/a/b
        lambda: (repo.git("rm", "-q", "src/lib.py"), repo.write("src/lib.py/inner.py", "x = 1\n")),
        lambda: (repo.git("rm", "-rq", "src/lib.py"), repo.write("src/lib.py", "VALUE = 9\n")),
        lambda: os.chmod(repo.path / "bin" / "run", 0o644),
        lambda: (os.unlink(repo.path / "app-link"), os.symlink("src", repo.path / "app-link")),
    ]
    for n, step in enumerate(steps):
        step()
        repo.git("add", "-A")
        repo.commit("shape %d" % n)
        push_and_compare(repo, vm)
        assert repo.vm_git(vm, "diff-index", "--cached", "HEAD") == ""
        assert repo.vm_git(vm, "diff-files") == ""
        assert repo.vm_sh(vm, "find . -path ./.git -prune -o -type d -empty -print") == ""
    assert repo.vm_sh(vm, "ls $HOME/hook-ran 2>/dev/null || true") == ""


def test_eol_attributes_and_a_push_that_changes_them(tmp_path):
    repo = crlf_repo(tmp_path)
    vm = repo.slicer_json("push", "--launch")["vm"]
    repo.write("notes.txt", "one\r\ntwo\r\nthree\r\n")
    repo.commit("host: notes")
    repo.write("other.txt", "x\r\ny\r\n")
    repo.write("new.txt", "new\r\n")
    push_and_compare(repo, vm)
    # The push changes the attributes: files it never sent may now scan differently.
    repo.write(".gitattributes", "*.txt eol=crlf\n*.md text eol=crlf\n")
    repo.commit("host: md too")
    push_and_compare(repo, vm)


def test_an_lfs_like_filter_the_vm_lacks(tmp_path):
    repo, _log = lfs_repo(tmp_path)
    vm = repo.slicer_json("push", "--launch")["vm"]
    repo.write("model.bin", b"\x02other weights\x03" * 50)
    repo.write("code.py", "x = 2\n")
    repo.commit("host: new model")
    repo.write("model.bin", b"\x04uncommitted\x05" * 50)
    repo.write("more.bin", b"\x06new\x07" * 50)
    push_and_compare(repo, vm)


def test_host_autocrlf(tmp_path):
    repo = crlf_repo(tmp_path, attributes="", config=[("core.autocrlf", "true")])
    vm = repo.slicer_json("push", "--launch")["vm"]
    repo.write("notes.txt", "one\r\ntwo\r\nchanged\r\n")
    repo.commit("host: notes")
    repo.write("other.txt", "x\r\nwip\r\n")
    push_and_compare(repo, vm)


def test_sparse_checkout_on_the_host(repo):
    repo.write("docs/guide.md", "guide\n")
    repo.commit("docs")
    repo.git("sparse-checkout", "set", "src")
    vm = repo.slicer_json("push", "--launch")["vm"]
    repo.write("src/lib.py", "VALUE = 3\n")
    repo.commit("host: lib")
    repo.write("src/wip.py", "wip\n")
    push_and_compare(repo, vm)


def test_sha256_objects(tmp_path):
    path = tmp_path / "sha256"
    path.mkdir()
    repo = Repo(path)
    repo.git("init", "-q", "-b", "main", "--object-format=sha256")
    repo.write("a.txt", "a\n")
    repo.commit("initial")
    vm = repo.slicer_json("push", "--launch")["vm"]
    repo.write("a.txt", "a2\n")
    repo.commit("host: a2")
    repo.write("b.txt", "b\n")
    recorded = push_and_compare(repo, vm)
    assert len(recorded["head"]) == 64 and len(recorded["overlay"]["files"]["b.txt"][1]) == 64
    # a file large enough that its id follows the stream (laterids.py): a sha256 id
    (repo.path / "big.bin").write_bytes(bytes(range(256)) * (5 * 4096))
    recorded = push_and_compare(repo, vm)
    assert recorded["overlay"]["files"]["big.bin"][1] == repo.git("hash-object", "big.bin").strip()


def test_a_submodule_moves(tmp_path):
    new_repo(tmp_path / "lib", {"l.txt": "l\n"})
    app = new_repo(tmp_path / "app", {"a.txt": "a\n"})
    app.add_submodule("../lib", "lib")
    vm = app.slicer_json("push", "--launch")["vm"]
    app.write("lib/l.txt", "l2\n")
    app.git("-C", "lib", "commit", "-qam", "lib: l2")
    app.commit("app: bump lib")
    app.write("a.txt", "a wip\n")
    push_and_compare(app, vm)


def test_a_push_that_stops_ignoring_a_vm_file(repo):
    """A VM file git ignored becomes untracked when the push drops the rule: the record lists it."""
    repo.write(".gitignore", "*.log\n")
    repo.commit("ignore logs")
    vm = repo.slicer_json("push", "--launch")["vm"]
    repo.vm_sh(vm, "echo vm > build.log")
    os.unlink(repo.path / ".gitignore")
    repo.commit("host: keep logs")
    repo.slicer_json("push", vm)
    recorded, scanned = recorded_and_scanned(repo, vm)
    assert recorded == scanned and "build.log" in recorded["overlay"]["files"]


def test_a_push_that_changes_the_hosts_excludes(repo):
    """The same through the host's info/exclude, which the push copies into the VM."""
    exclude = repo.path / ".git" / "info" / "exclude"
    exclude.parent.mkdir(exist_ok=True)
    exclude.write_text("*.tmp\n")
    vm = repo.slicer_json("push", "--launch")["vm"]
    repo.vm_sh(vm, "echo vm > scratch.tmp")
    exclude.write_text("")
    repo.write("README.md", "# changed\n")
    repo.commit("host: readme")
    repo.slicer_json("push", vm)
    recorded, scanned = recorded_and_scanned(repo, vm)
    assert recorded == scanned and "scratch.tmp" in recorded["overlay"]["files"]


def test_a_file_the_vm_rewrites_while_the_push_finishes_is_recorded_as_the_vms(launched):
    """The agent takes the blob ids of the files it has just placed instead of hashing them
    again, but only while their stat data says nobody wrote them since: a same-size rewrite by
    the VM's user before the scan is the VM's change, and the push says so."""
    import subprocess
    import sys
    import time
    from hostile_agent import guest_home, install, uninstall, vm_home
    repo, vm = launched
    repo.write("data.bin", b"host" * 4096)
    hold = vm_home(vm) / "hold"
    hold.mkdir()
    install(repo, vm, None, env={"GIT_SLICER_TEST_HOLD_AT": "agent:push-applied",
                                 "GIT_SLICER_TEST_HOLD_DIR": guest_home(vm) + "/hold"})
    proc = subprocess.Popen([sys.executable, "-m", "git_slicer", "push", vm], cwd=repo.path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (hold / "held").exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    placed = next(vm_home(vm).glob("*/data.bin"))
    placed.write_bytes(b"vm!!" * 4096)                 # the VM's user, in the same size
    (hold / "go").touch()
    _, err = proc.communicate(timeout=60)
    uninstall(repo)
    assert proc.returncode == 0, err
    assert b"the VM changed data.bin while the push was applied" in err, err
    recorded, scanned = recorded_and_scanned(repo, vm)
    # Agreed: what the push placed; the VM's rewrite is the VM's change (test_vm_edit_during_push)
    assert recorded["overlay"]["files"]["data.bin"][1] == repo.git("hash-object", "data.bin").strip()
    assert scanned["overlay"]["files"]["data.bin"][1] == repo.git(
        "hash-object", "--stdin", input=b"vm!!" * 4096).strip()
    assert repo.slicer_json("status", vm)["vm_side"]["changed_since_sync"] == ["data.bin"]

