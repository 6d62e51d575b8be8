"""Content-level attacks made with real git inside the VM (the real agent sends them): malicious
trees built with `git mktree` / `hash-object --literally`, gitlinks and .gitmodules, drivers in
.gitattributes, symlinks to .git and /etc, tree bombs, and host work the VM's changes meet.

Case numbers refer to the list of bad inputs in SECURITY.md.
"""

import os
import re

import pytest

from conftest import run
from hostile_agent import _guest, run_paused, vm_home

# Builds a tree from raw entries (mode, name, oid hex) with `git hash-object --literally`, so any
# name git itself would refuse can be tried; prints the tree id. Runs with python3 in the VM.
MKTREE = r'''
import subprocess, sys
entries = []
for spec in sys.argv[1:]:
    mode, name, oid = spec.split(":", 2)
    entries.append(mode.encode() + b" " + name.encode("utf-8", "surrogateescape").replace(b"\\r", b"\r")
                   + b"\0" + bytes.fromhex(oid))
data = b"".join(entries)
print(subprocess.run(["git", "hash-object", "-t", "tree", "--literally", "-w", "--stdin"], input=data,
                     stdout=subprocess.PIPE, check=True).stdout.decode().strip())
'''


def vm_python(repo, vm, script, *args):
    (vm_home(vm) / "mk.py").write_text(script)
    home = _guest(vm)[0]
    proc = repo.slicer("exec", vm, "--", "python3", home + "/mk.py", *args)
    return proc.stdout.decode().strip()


def blob(repo, vm, text="x\n"):
    return repo.vm_sh(vm, "printf '%s' | git hash-object -w --stdin" % text.replace("\n", "\\n")).strip()


def commit_tree(repo, vm, tree, branch="evil"):
    """Commit `tree` on top of the VM's HEAD as `branch` (the VM's checkout is untouched)."""
    return repo.vm_sh(vm, "c=$(git commit-tree %s -p HEAD -m evil) && git update-ref refs/heads/%s $c && echo $c"
                      % (tree, branch)).strip()


IMPORTS = (".git/refs/slicer", ".git/logs/refs/slicer")


def refused(repo, vm, expect, config=(), skip=()):
    for key, value in config:
        repo.git("config", key, value)
    before = repo.fingerprint(skip=skip)
    proc = repo.slicer("pull", vm, check=False)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode != 0, err
    assert re.search(expect, err), err
    assert "internal error" not in err and "\x1b" not in err, err
    assert repo.fingerprint(skip=skip) == before, "the host changed: " + err
    assert not [n for n in os.listdir(repo.path / ".git" / "objects") if n.startswith("incoming-")]
    return err


# ------------------------------------------------------------------ 15, 16: names in trees
BAD_NAMES = {
    "15-dotgit": ".git", "15-DOTGIT": ".GIT", "15-git~1": "git~1", "15-dotgit-dot": ".git.",
    "15-zero-width": ".g\u200cit", "16-dotdot": "..", "16-dot": ".", "16-empty": "",
    "16-slash": "a/b", "14-newline": "a\nb", "14-escape": "\x1b[31mx", "18-carriage-return": "x\\r",
}


@pytest.mark.parametrize("case", sorted(BAD_NAMES))
def test_tree_entry_names_are_refused(launched, case):
    repo, vm = launched
    b = blob(repo, vm)
    tree = vm_python(repo, vm, MKTREE, "100644:%s:%s" % (BAD_NAMES[case], b))
    commit_tree(repo, vm, tree)
    refused(repo, vm, "failed verification|unsafe path|empty name|malformed tree")


def test_15_dotgit_below_a_subdirectory(launched):
    repo, vm = launched
    hook = blob(repo, vm, "#!/bin/sh\\ntouch /tmp/pwned\\n")
    hooks = vm_python(repo, vm, MKTREE, "100755:post-checkout:%s" % hook)
    dotgit = vm_python(repo, vm, MKTREE, "40000:hooks:%s" % hooks)
    sub = vm_python(repo, vm, MKTREE, "40000:.GIT:%s" % dotgit)
    commit_tree(repo, vm, vm_python(repo, vm, MKTREE, "40000:sub:%s" % sub))
    refused(repo, vm, "failed verification|inside a .git")


# ------------------------------------------------------------------ 17, 18: submodules
def test_17_gitmodules_as_a_symlink(launched):
    repo, vm = launched
    target = blob(repo, vm, ".git/config")
    commit_tree(repo, vm, vm_python(repo, vm, MKTREE, "120000:.gitmodules:%s" % target))
    refused(repo, vm, "failed verification|gitmodules")


def test_17_gitmodules_update_command(launched):
    repo, vm = launched
    modules = blob(repo, vm, '[submodule "s"]\\n\\tpath = s\\n\\turl = https://example.com/s\\n\\tupdate = !touch /tmp/pwned\\n')
    head = repo.vm_git(vm, "rev-parse", "HEAD").strip()
    commit_tree(repo, vm, vm_python(repo, vm, MKTREE, "100644:.gitmodules:%s" % modules, "160000:s:%s" % head))
    refused(repo, vm, "failed verification")


def test_18_gitmodules_path_with_carriage_return(launched):
    repo, vm = launched
    modules = blob(repo, vm, '[submodule "s"]\\n\\tpath = "s\\r"\\n\\turl = https://example.com/s\\n')
    head = repo.vm_git(vm, "rev-parse", "HEAD").strip()
    commit_tree(repo, vm, vm_python(repo, vm, MKTREE, "100644:.gitmodules:%s" % modules, "160000:s:%s" % head))
    refused(repo, vm, "carriage return|failed verification")


def test_17_gitlink_is_kept_as_data_and_never_initialised(launched):
    """A well-formed submodule (gitlink + .gitmodules) is imported as data: nothing is cloned,
    initialised or checked out on the host."""
    repo, vm = launched
    marker = repo.path.parent / "cloned"
    modules = blob(repo, vm, '[submodule "s"]\\n\\tpath = s\\n\\turl = %s\\n' % marker)
    head = repo.vm_git(vm, "rev-parse", "HEAD").strip()
    tree = repo.vm_sh(vm, "git ls-tree HEAD").strip() + "\n"
    tree += "100644 blob %s\t.gitmodules\n160000 commit %s\ts\n" % (modules, head)
    new = repo.vm_sh(vm, "printf '%s' | git mktree --missing" % tree.replace("\t", "\\t").replace("\n", "\\n")).strip()
    c = repo.vm_sh(vm, "c=$(git commit-tree %s -p HEAD -m sub) && git update-ref refs/heads/main $c && "
                       "git reset -q --hard $c 2>/dev/null; echo $c" % new).strip().splitlines()[-1]
    repo.slicer("pull", vm)
    assert repo.git("rev-parse", "HEAD").strip() == c
    assert not marker.exists()
    assert not (repo.path / "s" / ".git").exists()
    assert not (repo.path / ".git" / "modules").exists()
    assert "submodule" not in (repo.path / ".git" / "config").read_text()


# ------------------------------------------------------------------ 19, 20: drivers and links
def test_19_gitattributes_drivers_never_run_on_the_host(launched, hermetic_seal):
    repo, vm = launched
    marker = repo.path.parent / "driver-ran"
    for kind in ("clean", "smudge"):
        repo.git("config", "--global", "filter.evil.%s" % kind, "echo %s >> %s; cat" % (kind, marker))
    repo.git("config", "--global", "diff.evil.command", "touch %s" % marker)
    repo.git("config", "--global", "diff.evil.textconv", "touch %s; cat" % marker)
    repo.git("config", "--global", "merge.evil.driver", "touch %s" % marker)
    repo.vm_sh(vm, "printf '* filter=evil diff=evil merge=evil\\n' > .gitattributes && echo data > data.txt && "
                   "git add -A && git -c filter.evil.clean=cat -c filter.evil.smudge=cat commit -qm attrs && "
                   "echo changed >> data.txt && echo new > untracked.txt")
    repo.slicer("pull", vm)
    assert (repo.path / "data.txt").read_text() == "data\nchanged\n"
    assert (repo.path / "untracked.txt").read_text() == "new\n"
    assert not marker.exists(), marker.read_text()
    assert repo.git("ls-files", "-s", "data.txt") == repo.vm_git(vm, "ls-files", "-s", "data.txt")


@pytest.mark.parametrize("how", ["committed", "uncommitted", "directory-swapped"])
def test_a_vm_change_to_the_hooks_git_runs_is_refused_until_accepted(launched, how):
    """core.hooksPath in the worktree (`.githooks/`, husky's `.husky/`) makes hooks worktree
    files: a VM change there would run at the host's next commit."""
    repo, vm = launched
    marker = repo.path.parent / "vm-code-ran"
    repo.write(".githooks/pre-commit", "#!/bin/sh\nexit 0\n", mode=0o755)
    repo.commit("team hooks")
    repo.git("config", "core.hooksPath", ".githooks")
    repo.slicer("push", vm)
    evil = "printf '#!/bin/sh\\ntouch %s\\n' > .githooks/pre-commit" % marker
    if how == "directory-swapped":                  # the directory itself becomes a link to VM files
        evil = "mkdir -p evil && printf '#!/bin/sh\\ntouch %s\\n' > evil/pre-commit && chmod +x evil/pre-commit " \
               "&& git rm -rq .githooks && ln -s evil .githooks" % marker
    repo.vm_sh(vm, evil + (" && git add -A && git commit -qm hooks" if how == "committed" else ""))
    proc = repo.slicer("pull", vm, check=False)
    assert proc.returncode == 1 and b"core.hooksPath" in proc.stderr and b"--accept-hook-changes" in proc.stderr
    repo.write("work.txt", "w\n")
    repo.git("add", "work.txt")
    repo.git("commit", "-qm", "host work")                  # runs the host's hook, unchanged
    assert not marker.exists()
    if how != "committed":
        repo.slicer("pull", "--accept-hook-changes", vm)
        assert (repo.path / ".githooks").is_symlink() or "touch" in (repo.path / ".githooks/pre-commit").read_text()


def test_a_vm_change_to_a_husky_hook_is_refused_until_accepted(launched):
    """husky's core.hooksPath is `.husky/_`, whose scripts run the hooks in `.husky/`."""
    repo, vm = launched
    repo.write(".husky/_/pre-commit", "#!/bin/sh\n. \"$(dirname \"$0\")/../pre-commit\"\n", mode=0o755)
    repo.write(".husky/pre-commit", "exit 0\n")
    repo.commit("husky")
    repo.git("config", "core.hooksPath", ".husky/_")
    repo.slicer("push", vm)
    repo.vm_sh(vm, "echo 'touch /tmp/vm-code-ran' > .husky/pre-commit")
    proc = repo.slicer("pull", vm, check=False)
    assert proc.returncode == 1 and b".husky/pre-commit" in proc.stderr and b"--accept-hook-changes" in proc.stderr


def test_hooks_install_warns_when_core_hookspath_is_in_the_worktree(repo):
    repo.git("config", "core.hooksPath", ".githooks")
    assert b"points into the worktree" in repo.slicer("hooks", "install").stderr


def test_20_absolute_symlink_is_written_as_a_link(launched):
    repo, vm = launched
    repo.vm_sh(vm, "ln -s /etc/passwd passwd && ln -s ../../.git/config cfg && git add -A && git commit -qm links")
    repo.slicer("pull", vm)
    assert os.readlink(repo.path / "passwd") == "/etc/passwd"
    assert os.readlink(repo.path / "cfg") == "../../.git/config"


def test_04_symlink_to_dotgit_then_file_below_it(launched):
    """The VM makes `docs -> .git` and asks for `docs/hooks/post-checkout` as an untracked file."""
    repo, vm = launched
    repo.vm_sh(vm, "mkdir -p docs/hooks && printf '#!/bin/sh\\ntouch /tmp/pwned\\n' > docs/hooks/post-checkout && "
                   "chmod +x docs/hooks/post-checkout")
    hook = repo.path / ".git" / "hooks" / "post-checkout"
    os.symlink(".git", repo.path / "docs")      # the host already has the link
    refused(repo, vm, "docs is a symlink or a file on the host", skip=IMPORTS)
    assert not hook.exists()


def test_12_existing_host_symlink_is_never_written_through(launched, hermetic_seal):
    repo, vm = launched
    repo.vm_sh(vm, "mkdir -p build && echo owned > build/.bashrc")
    os.symlink(str(hermetic_seal), repo.path / "build")
    refused(repo, vm, "build is a symlink or a file on the host", skip=IMPORTS)
    assert not (hermetic_seal / ".bashrc").exists()


def test_03_symlink_to_etc_in_the_vm_is_a_link_not_a_directory(launched):
    repo, vm = launched
    repo.vm_sh(vm, "ln -s /etc etc && git add etc && git commit -qm etc")
    repo.slicer("pull", vm)
    assert os.readlink(repo.path / "etc") == "/etc"


# ------------------------------------------------------------------ 34: exhaustion by trees
def test_34_deep_tree_is_refused(launched):
    repo, vm = launched
    repo.vm_sh(vm, "t=$(printf '100644 blob %s\\tf\\n' $(echo x | git hash-object -w --stdin) | git mktree); "
                   "for i in $(seq 40); do t=$(printf '040000 tree %s\\td\\n' $t | git mktree); done; "
                   "git update-ref refs/heads/evil $(git commit-tree $t -p HEAD -m deep)")
    refused(repo, vm, "nested deeper than slicer.limit.treeDepth|deeper than", config=[("slicer.limit.treeDepth", "30")])


def test_34_tree_bomb_is_refused(launched):
    repo, vm = launched
    repo.vm_sh(vm, "t=$(printf '100644 blob %s\\tf\\n' $(echo x | git hash-object -w --stdin) | git mktree); "
                   "for i in $(seq 9); do t=$(for j in 0 1 2 3 4 5 6 7 8 9; do printf '040000 tree %s\\td'$j'\\n' $t; done"
                   " | git mktree); done; git update-ref refs/heads/evil $(git commit-tree $t -p HEAD -m bomb)")
    refused(repo, vm, "tree bomb")


# A 10-way tree three levels deep over one blob: 2110 paths from 4 small trees.
FANOUT_TREE = ("t=$(printf '100644 blob %s\\tf\\n' $(echo x | git hash-object -w --stdin) | git mktree); "
               "for i in 1 2 3; do t=$(for j in 0 1 2 3 4 5 6 7 8 9; do printf '040000 tree %s\\td'$j'\\n' $t; done"
               " | git mktree); done; ")
BOMB_OF_IT = ("b=$(for j in 0 1 2 3 4 5 6 7 8 9; do printf '040000 tree %s\\tb'$j'\\n' $t; done | git mktree); "
              "git update-ref refs/heads/evil $(git commit-tree $b -p HEAD -m bomb)")


def test_34_tree_bomb_of_trees_the_host_already_has(launched):
    """Trees the host has need no second check of their names, but they still count: a new tree
    that repeats one of them ten times expands to ten times its paths."""
    repo, vm = launched
    run(["sh", "-c", FANOUT_TREE], cwd=repo.path)           # the host has every tree of it
    repo.vm_sh(vm, FANOUT_TREE + BOMB_OF_IT)
    refused(repo, vm, "tree bomb", config=[("slicer.limit.objects", "5000")])


def test_34_tree_bomb_of_trees_counted_in_an_earlier_pull(launched):
    """A pull keeps the path counts of the trees it validated (objects/info/slicer-tree-path-counts); the
    next pull adds them up without walking those trees again, and still refuses the bomb."""
    repo, vm = launched
    repo.git("config", "slicer.limit.objects", "5000")
    repo.vm_sh(vm, FANOUT_TREE + "r=$( (git ls-tree HEAD; printf '040000 tree %s\\tlib\\n' $t) | git mktree); "
                   "git update-ref refs/heads/main $(git commit-tree $r -p HEAD -m lib) && git reset -q --hard")
    repo.slicer("pull", vm)                                  # 2110 paths under lib/: within the limit
    assert len(list((repo.path / "lib").rglob("f"))) == 1000
    with open(repo.path / ".git" / "objects" / "info" / "slicer-tree-path-counts") as fh:
        counts = dict(line.split() for line in fh)
    assert counts[repo.git("rev-parse", "HEAD:lib").strip()] == "2110"
    repo.vm_sh(vm, "t=$(git rev-parse HEAD:lib); " + BOMB_OF_IT)
    refused(repo, vm, "tree bomb")


# ------------------------------------------------------------------ host data (25-28)
def test_25_host_and_vm_changed_the_same_file(launched):
    repo, vm = launched
    repo.vm_sh(vm, "echo vm >> README.md")
    repo.write("README.md", "host edit\n")
    refused(repo, vm, "both changed: README.md; nothing was written", skip=IMPORTS)
    assert (repo.path / "README.md").read_text() == "host edit\n"


def test_26_host_untracked_file_where_the_vm_adds_one(launched):
    repo, vm = launched
    repo.vm_sh(vm, "echo vm > notes.txt")
    repo.write("notes.txt", "mine\n")
    refused(repo, vm, "both changed: notes.txt", skip=IMPORTS)
    assert (repo.path / "notes.txt").read_text() == "mine\n"


def test_27_diverged_history_does_not_move_the_branch(launched):
    repo, vm = launched
    repo.vm_sh(vm, "echo vm > v.txt && git add v.txt && git commit -qm vm")
    repo.write("h.txt", "host\n")
    head = repo.commit("host")
    proc = repo.slicer("pull", vm, check=False)
    assert proc.returncode != 0 and b"not a fast-forward" in proc.stderr
    assert repo.git("rev-parse", "HEAD").strip() == head
    assert not (repo.path / "v.txt").exists()


def test_28b_host_edit_after_the_first_scan_is_never_overwritten(launched):
    """The pull's first look at the host runs while the VM scans; a tracked file the host then
    edits (here: while the VM's pack arrives) and that the VM's commit also changes is a
    conflict, never overwritten: the host's verdict on the VM's paths is taken after their
    bytes are read."""
    repo, vm = launched
    repo.write("shared.txt", "base\n")
    repo.commit("shared")
    repo.slicer("push", vm)
    repo.vm_sh(vm, "echo vm > shared.txt && git commit -qam vm")
    head = repo.git("rev-parse", "HEAD").strip()
    proc, err = run_paused(repo, vm, "pause-fetch", ["pull", vm], lambda: repo.write("shared.txt", "host edit\n"))
    assert proc.returncode != 0 and b"both changed: shared.txt" in err, err
    assert (repo.path / "shared.txt").read_text() == "host edit\n"
    assert repo.git("rev-parse", "HEAD").strip() == head


def test_28_host_branch_moving_during_the_pull_stops_it(launched):
    """The VM (a hostile agent that pauses) holds the pull after the host read its branch; the
    host commits; the compare-and-swap then fails and nothing of the VM's is written."""
    repo, vm = launched
    repo.vm_sh(vm, "echo vm > v.txt && git add v.txt && git commit -qm vm && echo new > untracked.txt")
    moved = []

    def host_commits():
        repo.write("h.txt", "host\n")
        moved.append(repo.commit("host moved"))
    proc, err = run_paused(repo, vm, "pause-files", ["pull", vm], host_commits)
    head = moved[0]
    assert proc.returncode != 0
    assert b"main moved on the host during the pull; nothing was changed" in err, err
    assert repo.git("rev-parse", "HEAD").strip() == head
    assert not (repo.path / "v.txt").exists() and not (repo.path / "untracked.txt").exists()
    assert repo.status() == ""
