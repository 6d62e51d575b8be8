"""Pull: the VM's commits come home by fast-forward, its files only where the host did not
change the same path since the last agreed state."""

from __future__ import annotations

import os
import re

import pytest

from conftest import Repo


def test_pull_fast_forwards_commits_and_brings_uncommitted_files(launched):
    repo, vm = launched
    repo.vm_sh(vm, "echo feature > feature.py && git add feature.py && git commit -qm 'agent: feature' && "
                   "echo 'more' >> README.md && echo new > new.txt && git rm -q bin/run")
    vm_head = repo.vm_git(vm, "rev-parse", "HEAD").strip()
    result = repo.slicer_json("pull", vm)
    assert result["fast_forward"] is True
    assert result["to"] == vm_head == repo.git("rev-parse", "HEAD").strip()
    assert repo.git("rev-parse", "refs/slicer/%s/main" % vm).strip() == vm_head
    assert (repo.path / "feature.py").read_text() == "feature\n"
    assert repo.status() == repo.vm_status(vm)
    assert "more" in (repo.path / "README.md").read_text()
    assert not (repo.path / "bin" / "run").exists()
    assert repo.git("reflog", "-1", "--format=%gs", "main").startswith("slicer pull")


def test_pull_json_shape(launched):
    repo, vm = launched
    result = repo.slicer_json("pull", vm)
    assert set(result) == {"vm", "worktree", "branch", "from", "to", "fast_forward", "reset", "files", "conflicts",
                           "imported", "backup", "submodules", "ok"}
    assert result["files"] == {"written": [], "deleted": []}
    assert result["fast_forward"] is False and result["reset"] is False and result["backup"] is None


def test_a_refused_pull_still_prints_one_json_document(launched):
    """Scripts and agents read stdout: a failure is a document there too, beside the error line."""
    import json
    repo, vm = launched
    repo.vm_sh(vm, "echo vm > README.md")
    repo.write("README.md", "host\n")
    proc = repo.slicer("pull", vm, "--json", check=False)
    result = json.loads(proc.stdout)
    assert proc.returncode == 1 and result["ok"] is False and result["error"]["exit_code"] == 1
    assert "README.md" in result["error"]["message"] and result["error"]["details"]["conflicts"] == ["README.md"]
    assert b"error: the VM and the host both changed" in proc.stderr
    proc = repo.slicer("status", "--json", "--no-such-option", check=False)
    assert proc.returncode == 2 and json.loads(proc.stdout)["error"]["kind"] == "UsageError"
    # and success says so in the same key
    repo.write("README.md", "vm\n")
    assert repo.slicer_json("pull", vm)["ok"] is True and repo.slicer_json("status", vm)["ok"] is True


def test_pull_refuses_non_fast_forward_and_force_saves_the_host_tip(launched):
    repo, vm = launched
    repo.vm_sh(vm, "echo vm > vm.txt && git add vm.txt && git commit -qm 'vm side'")
    repo.write("host.txt", "host\n")
    host_tip = repo.commit("host side")
    proc = repo.slicer("pull", vm, check=False)
    assert proc.returncode == 1
    assert b"not a fast-forward" in proc.stderr and b"Traceback" not in proc.stderr
    assert repo.git("rev-parse", "HEAD").strip() == host_tip
    vm_head = repo.vm_git(vm, "rev-parse", "HEAD").strip()
    assert repo.git("rev-parse", "refs/slicer/%s/main" % vm).strip() == vm_head   # imported anyway
    result = repo.slicer_json("pull", vm, "--force")
    assert repo.git("rev-parse", "HEAD").strip() == vm_head
    assert repo.git("rev-parse", result["backup"]["ref"] + "^1").strip() == host_tip


def test_pull_with_conflicting_host_edit_writes_nothing(launched):
    repo, vm = launched
    repo.vm_sh(vm, "echo 'vm version' > README.md && echo other > other.txt")
    repo.write("README.md", "host version\n")
    before = repo.fingerprint(skip=(".git/refs/slicer", ".git/logs/refs/slicer"))
    proc = repo.slicer("pull", vm, check=False)
    assert proc.returncode == 1
    assert b"README.md" in proc.stderr and b"nothing was written" in proc.stderr
    assert repo.fingerprint(skip=(".git/refs/slicer", ".git/logs/refs/slicer")) == before
    assert not (repo.path / "other.txt").exists()                   # all or nothing


def test_pull_keeps_host_edits_to_other_paths(launched):
    repo, vm = launched
    repo.vm_sh(vm, "echo vm >> src/app.py")
    repo.write("src/lib.py", "VALUE = 'host'\n")
    repo.slicer("pull", vm)
    assert (repo.path / "src" / "app.py").read_text().endswith("vm\n")
    assert (repo.path / "src" / "lib.py").read_text() == "VALUE = 'host'\n"
    # Both sides now differ only by the host's edit, which a push delivers without refusal.
    repo.slicer("push")
    assert repo.vm_status(vm) == repo.status()


def test_pull_never_overwrites_host_untracked_or_ignored_files(launched):
    repo, vm = launched
    repo.vm_sh(vm, "echo vm > notes.txt")
    repo.write("notes.txt", "host notes\n")
    assert repo.slicer("pull", vm, check=False).returncode == 1
    assert (repo.path / "notes.txt").read_text() == "host notes\n"
    # The same when the VM commits the file (the pull's first look at the host leaves untracked
    # files out; the paths the VM changed are looked at again, and their bytes read from disk).
    repo.vm_sh(vm, "rm notes.txt && echo vm > plan.txt && git add plan.txt && git commit -qm plan")
    repo.write("plan.txt", "host plan\n")
    proc = repo.slicer("pull", vm, check=False)
    assert proc.returncode == 1 and b"plan.txt" in proc.stderr
    assert (repo.path / "plan.txt").read_text() == "host plan\n"
    assert repo.git("log", "-1", "--format=%s").strip() != "plan"


KEPT_HOME = (".env", "debug.log", "config.env")


def test_pull_never_overwrites_host_files_kept_home_by_slicerignore_or_gitignore(launched):
    """git status never lists an ignored file and the scans leave .slicerignore'd paths out, yet
    they are the host's own (secrets, logs, a local config): a VM commit that changes them is a
    conflict like any host change, and --force saves the host's versions first."""
    repo, vm = launched
    repo.write(".slicerignore", ".env\nconfig.env\n")
    repo.write(".gitignore", "*.log\n")
    repo.write("config.env", "KEY=placeholder\n")
    repo.commit("ignore rules")
    repo.slicer("push", vm)
    repo.write(".env", "SECRET=the host's\n")                      # untracked, kept home
    repo.write("debug.log", "the host's log\n")                     # gitignored
    repo.write("config.env", "KEY=the host's real key\n")           # tracked, edited, kept home
    repo.vm_sh(vm, "echo vm > .env && echo vm > debug.log && echo KEY=vm > config.env && "
                   "git add -f .env debug.log config.env && git commit -qm 'agent: add files'")
    imported = (".git/refs/slicer", ".git/logs/refs/slicer", ".git/objects")    # the VM's commit, refused
    before = repo.fingerprint(skip=imported)
    proc = repo.slicer("pull", vm, check=False)
    assert proc.returncode == 1 and b"nothing was written" in proc.stderr, proc.stderr
    assert all(path.encode() in proc.stderr for path in KEPT_HOME), proc.stderr
    assert repo.fingerprint(skip=imported) == before
    backup = repo.slicer_json("pull", "--force", vm)["backup"]["ref"]
    saved = {path: repo.git("show", "%s%s:%s" % (backup, "" if path == "config.env" else "^3", path))
             for path in KEPT_HOME}         # the tracked file in the backup's tree, the others in its third parent
    assert saved == {".env": "SECRET=the host's\n", "debug.log": "the host's log\n",
                     "config.env": "KEY=the host's real key\n"}


@pytest.mark.parametrize("flag", ["--skip-worktree", "--assume-unchanged"])
def test_pull_never_overwrites_a_host_file_the_index_hides_from_git(launched, flag):
    """A local config kept out of commits by an index flag: git status never reports its edit,
    yet a VM change to it is a conflict, and --force saves the host's version first."""
    repo, vm = launched
    repo.git("update-index", flag, "src/lib.py")
    repo.write("src/lib.py", "VALUE = 'the host's local secret'\n")
    repo.vm_sh(vm, "echo \"VALUE = 'vm'\" > src/lib.py && git commit -qam 'the VM agent'")
    proc = repo.slicer("pull", vm, check=False)
    assert proc.returncode == 1 and b"src/lib.py" in proc.stderr and b"move your version aside" in proc.stderr
    assert (repo.path / "src/lib.py").read_text() == "VALUE = 'the host's local secret'\n"
    backup = repo.slicer_json("pull", "--force", vm)["backup"]["ref"]
    assert repo.git("show", backup + "^3:src/lib.py") == "VALUE = 'the host's local secret'\n"
    assert (repo.path / "src/lib.py").read_text() == "VALUE = 'vm'\n"


def test_pull_never_overwrites_a_gitignored_host_file_the_vm_stages(launched):
    repo, vm = launched
    repo.write(".gitignore", "*.log\n")
    repo.commit("ignore logs")
    repo.slicer("push", vm)
    repo.write("debug.log", "the host's log\n")
    repo.vm_sh(vm, "echo vm > debug.log && git add -f debug.log")
    proc = repo.slicer("pull", vm, check=False)
    assert proc.returncode == 1 and b"git stash --all, as debug.log is ignored" in proc.stderr, proc.stderr
    assert (repo.path / "debug.log").read_text() == "the host's log\n"


def test_pull_same_change_on_both_sides_is_not_a_conflict(launched):
    repo, vm = launched
    repo.vm_sh(vm, "echo same > same.txt")
    repo.write("same.txt", "same\n")
    repo.slicer("pull", vm)
    assert (repo.path / "same.txt").read_text() == "same\n"


def test_pull_no_files_brings_commits_only(launched):
    repo, vm = launched
    repo.vm_sh(vm, "echo c > c.txt && git add c.txt && git commit -qm c && echo dirty > dirty.txt")
    repo.slicer("pull", vm, "--no-files")
    assert (repo.path / "c.txt").exists()
    assert not (repo.path / "dirty.txt").exists()
    # The VM still has uncommitted work, so a push must not overwrite it.
    assert repo.slicer("push", check=False).returncode == 1


def test_pull_no_merge_imports_refs_only(launched):
    repo, vm = launched
    old = repo.git("rev-parse", "HEAD").strip()
    repo.vm_sh(vm, "echo c > c.txt && git add c.txt && git commit -qm c")
    result = repo.slicer_json("pull", vm, "--no-merge")
    assert repo.git("rev-parse", "HEAD").strip() == old
    assert result["imported"]["main"] == repo.vm_git(vm, "rev-parse", "HEAD").strip()
    assert not (repo.path / "c.txt").exists()


def test_pull_brings_staged_changes_symlinks_and_exec_bits(launched):
    repo, vm = launched
    repo.vm_sh(vm, "echo staged > staged.txt && git add staged.txt && echo '#!/bin/sh' > tool && "
                   "chmod +x tool && ln -s staged.txt alias && chmod -x bin/run")
    repo.slicer("pull", vm)
    assert repo.status() == repo.vm_status(vm)
    assert os.readlink(repo.path / "alias") == "staged.txt"
    assert os.access(repo.path / "tool", os.X_OK)
    assert not os.access(repo.path / "bin" / "run", os.X_OK)
    assert repo.git("diff", "--cached", "--name-only").split() == ["staged.txt"]


def test_pull_binary_and_non_ascii_files(launched):
    repo, vm = launched
    repo.vm_sh(vm, "printf '\\000\\001\\377' > 'été.bin' && mkdir -p 'données' && echo x > 'données/ü.txt' && "
                   "git add . && git commit -qm unicode && printf '\\002' >> 'été.bin'")
    repo.slicer("pull", vm)
    assert (repo.path / "été.bin").read_bytes() == b"\x00\x01\xff\x02"
    assert repo.status() == repo.vm_status(vm)


def test_pull_into_linked_worktree_from_subdirectory(repo, tmp_path):
    other = tmp_path / "wt"
    repo.git("worktree", "add", "-q", "-b", "topic", str(other))
    wt = Repo(other)
    vm = wt.slicer_json("push", "--launch")["vm"]
    wt.vm_sh(vm, "echo t > topic.txt && git add topic.txt && git commit -qm topic")
    from conftest import slicer
    slicer(other / "src", "pull", vm)
    assert wt.git("log", "-1", "--format=%s").strip() == "topic"
    assert repo.git("rev-parse", "topic") == wt.git("rev-parse", "HEAD")
    assert repo.git("rev-parse", "--abbrev-ref", "HEAD").strip() == "main"


def test_pull_when_host_branch_moved_ahead_keeps_host(launched):
    repo, vm = launched
    repo.write("ahead.txt", "a\n")
    tip = repo.commit("host ahead")
    result = repo.slicer_json("pull", vm)
    assert repo.git("rev-parse", "HEAD").strip() == tip
    assert "ahead" in result.get("note", "")


def test_pull_with_the_host_ahead_brings_the_vms_uncommitted_files(launched):
    """The host committed since the last sync while the VM's agent worked without committing:
    the push asks for a pull first, and the pull brings the VM's files onto the host's newer
    commit (a dead end before: it left them in the VM without a word)."""
    repo, vm = launched
    repo.vm_sh(vm, "echo 'print(1)' > src/app.py && echo new > staged.txt && git add staged.txt && rm src/lib.py")
    repo.write("README.md", "# the host's commit\n")
    tip = repo.commit("host ahead")
    refused = repo.slicer("push", vm, check=False)
    assert refused.returncode != 0 and b"pull" in refused.stderr, refused.stderr
    result = repo.slicer_json("pull", vm)
    assert "ahead" in result.get("note", "")
    assert repo.git("rev-parse", "HEAD").strip() == tip
    assert (repo.path / "src/app.py").read_text() == "print(1)\n"
    assert repo.git("diff", "--cached", "--name-only").split() == ["staged.txt"]
    assert not (repo.path / "src/lib.py").exists()
    repo.slicer("push", vm)
    assert repo.vm_git(vm, "rev-parse", "HEAD").strip() == tip
    assert repo.vm_status(vm) == repo.status()
    assert repo.slicer_json("status", vm)["in_sync"] is True


def test_pull_after_the_host_amended_brings_the_vms_uncommitted_files(launched):
    """The VM made no commits; the host amended the commit both had (a rebase is the same):
    not a divergence, and the VM's branch is no VM work: its files apply onto the new commit."""
    repo, vm = launched
    repo.vm_sh(vm, "echo 'print(1)' > src/app.py && echo new > vm.txt")
    repo.write("README.md", "# amended on the host\n")
    repo.git("add", "README.md")
    repo.git("commit", "-q", "--amend", "--no-edit")
    assert repo.slicer_json("log", vm)["commits"] == []
    assert repo.slicer("push", vm, check=False).returncode == 1             # the VM's files first
    result = repo.slicer_json("pull", vm)
    assert "rewrote" in result["note"] and result["to"] == repo.git("rev-parse", "HEAD").strip()
    assert (repo.path / "src/app.py").read_text() == "print(1)\n" and (repo.path / "vm.txt").exists()
    repo.slicer("push", vm)
    assert repo.vm_git(vm, "rev-parse", "HEAD") == repo.git("rev-parse", "HEAD")
    assert repo.vm_status(vm) == repo.status()


def test_pull_with_the_host_ahead_and_both_changing_a_file_says_how_to_merge(launched):
    """The host's side of the clash is in a commit, where `git stash` cannot help: the hint
    says to commit in the VM, and that commit then comes home to merge."""
    repo, vm = launched
    repo.vm_sh(vm, "echo 'print(\"vm\")' > src/app.py")
    repo.write("src/app.py", "print('host')\n")
    repo.commit("host ahead")
    before = repo.status()
    refused = repo.slicer("pull", vm, check=False)
    assert refused.returncode != 0 and b"src/app.py" in refused.stderr, refused.stderr
    assert b"git slicer exec %s -- sh -c 'git add -A && git commit -m MESSAGE'" % vm.encode() in refused.stderr, \
        refused.stderr
    assert repo.status() == before and (repo.path / "src/app.py").read_text() == "print('host')\n"
    repo.slicer("exec", vm, "--", "git", "commit", "-qam", "the VM's work")
    diverged = repo.slicer("pull", vm, check=False)
    assert diverged.returncode != 0 and b"refs/slicer/%s/main" % vm.encode() in diverged.stderr
    assert repo.git("show", "refs/slicer/%s/main:src/app.py" % vm) == 'print("vm")\n'


def test_pull_after_merging_the_vms_commit_by_hand_brings_only_its_later_work(launched):
    """Both sides changed one file: the pull refuses, the VM commits, the host merges that
    commit as the hint says. The host then has the VM's commit, so it is no longer the VM's
    change: the next pull brings what the VM did since, and the push after it goes through."""
    repo, vm = launched
    repo.vm_sh(vm, "echo 'print(\"vm\")' >> src/app.py")
    repo.write("src/app.py", "print('host')\n" + (repo.path / "src/app.py").read_text())
    repo.commit("host")
    assert repo.slicer("pull", vm, check=False).returncode == 1
    repo.vm_sh(vm, "git commit -qam 'the VM agent' && echo later > later.txt")
    diverged = repo.slicer("pull", vm, check=False)
    assert diverged.returncode == 1 and b"merge or rebase onto refs/slicer/%s/main" % vm.encode() in diverged.stderr
    repo.git("merge", "-q", "--no-edit", "refs/slicer/%s/main" % vm)
    merged = repo.git("rev-parse", "HEAD").strip()
    assert [f["path"] for f in repo.slicer_json("diff", vm)["files"]] == ["later.txt"]
    repo.slicer("pull", vm)
    assert repo.git("rev-parse", "HEAD").strip() == merged
    assert (repo.path / "later.txt").read_text() == "later\n"
    assert repo.git("status", "--porcelain") == "?? later.txt\n"
    repo.slicer("push", vm)
    assert repo.vm_git(vm, "rev-parse", "HEAD").strip() == merged
    assert repo.vm_status(vm) == repo.status()


def merged_by_hand(repo, vm, vm_script: str) -> None:
    """The host pushes an uncommitted README.md edit; the VM runs `vm_script` (a commit of it);
    the host commits too, the pull refuses the divergence, and the host merges the VM's branch
    by hand, its own README.md edit stashed."""
    repo.write("README.md", "# the host's work in progress, pushed\n")
    repo.slicer("push", vm)
    repo.vm_sh(vm, vm_script)
    repo.write("o.txt", "o\n")
    repo.git("add", "o.txt")
    repo.git("commit", "-qm", "host")
    assert repo.slicer("pull", vm, check=False).returncode == 1           # diverged
    repo.git("stash", "-q")
    repo.git("merge", "-q", "--no-edit", "refs/slicer/%s/main" % vm)


def test_a_push_after_merging_the_vms_commits_by_hand_needs_no_pull_first(launched):
    """The host has every VM commit once it merged them: they are no unpulled work."""
    repo, vm = launched
    merged_by_hand(repo, vm, "echo vm >> src/app.py && git commit -qam 'the VM agent, with the host work'")
    repo.slicer("push", vm)
    assert repo.vm_git(vm, "rev-parse", "HEAD") == repo.git("rev-parse", "HEAD")
    assert repo.vm_status(vm) == repo.status() == ""


def test_a_vm_that_goes_back_behind_the_agreed_commit_takes_no_host_work_with_it(launched):
    """The VM drops its last commit and the host's pushed changes: that is no work of its own,
    and the host, which has that commit, keeps its edit and its untracked file."""
    repo, vm = launched
    repo.write("README.md", "# the host's work\n")
    repo.write("notes.txt", "host notes\n")
    repo.slicer("push", vm)
    repo.vm_sh(vm, "echo x > x.txt && git add x.txt && git commit -qm 'the VM agent'")
    repo.slicer("pull", vm)
    repo.vm_sh(vm, "git reset -q --hard HEAD~1 && git clean -qfd")
    assert repo.slicer_json("diff", vm)["files"] == []
    result = repo.slicer_json("pull", vm)
    assert "not applied" in result["note"]
    assert (repo.path / "README.md").read_text() == "# the host's work\n"
    assert (repo.path / "notes.txt").read_text() == "host notes\n" and (repo.path / "x.txt").exists()


def test_a_merged_vm_commit_is_not_undone_when_the_vm_has_moved_to_another_branch(launched):
    """The VM committed the host's pushed edit, then left the linked branch; the host merged
    that commit by hand. Its files are the commit's, not the agreed overlay's from before it."""
    repo, vm = launched
    merged_by_hand(repo, vm, "echo 'the VM agent' >> README.md && git commit -qam 'the VM agent' && "
                             "git switch -q -c other")
    merged = (repo.path / "README.md").read_text()
    assert merged.endswith("the VM agent\n")
    assert repo.slicer_json("diff", vm)["files"] == []
    repo.slicer("pull", vm)
    assert (repo.path / "README.md").read_text() == merged and repo.status() == ""


def test_pull_refuses_while_the_host_is_on_another_branch(launched):
    """Measured against another branch's checkout, the switch itself looked like host edits (a
    staged revert) and the pull moved the branch checked out, not the VM's."""
    repo, vm = launched
    repo.git("branch", "release")
    repo.write("README.md", "# on main only\n")
    main_tip = repo.commit("main only")
    repo.slicer("push", vm)
    repo.vm_sh(vm, "echo vm > vm.txt && git add vm.txt && git commit -qm 'the VM agent'")
    repo.git("switch", "-q", "release")
    assert "note: the worktree is on branch release, not main" in repo.slicer("status", vm).stdout.decode()
    proc = repo.slicer("pull", vm, check=False)
    assert proc.returncode == 1 and b"git switch main" in proc.stderr, proc.stderr
    assert repo.git("rev-parse", "release") != main_tip and repo.status() == ""
    repo.git("switch", "-q", "main")
    repo.slicer("pull", vm)
    assert repo.git("rev-parse", "main") == repo.vm_git(vm, "rev-parse", "HEAD")
    repo.vm_sh(vm, "echo more >> vm.txt")
    repo.git("branch", "-m", "main", "trunk")              # renamed: `git switch main` cannot be the way
    proc = repo.slicer("pull", vm, check=False)
    hint = re.search(rb"`(git branch -m main)`", proc.stderr)
    assert proc.returncode == 1 and hint, proc.stderr
    repo.git(*hint.group(1).decode().split()[1:])
    repo.slicer("pull", vm)
    assert (repo.path / "vm.txt").read_text() == "vm\nmore\n"


def test_a_vm_on_another_branch_is_named_and_the_hint_brings_its_work_home(launched):
    """Pull brings work from the linked branch only, so `pull first` led nowhere: push says
    which branch the VM is on and how to switch it back."""
    repo, vm = launched
    repo.vm_sh(vm, "git switch -q -c agent/wip && echo work >> README.md")
    repo.write("src/app.py", "print('host')\n")
    proc = repo.slicer("push", vm, check=False)
    assert proc.returncode == 1 and b"on branch agent/wip, not main" in proc.stderr, proc.stderr
    switch = re.search(rb"`git slicer (exec \S+ -- git switch main)`", proc.stderr)
    assert switch, proc.stderr
    assert b"switch it back" in repo.slicer("pull", vm).stderr
    repo.slicer(*switch.group(1).decode().split())
    repo.slicer("pull", vm)
    assert (repo.path / "README.md").read_text().endswith("work\n")
    repo.slicer("push", vm)
    assert repo.vm_status(vm) == repo.status()


@pytest.mark.parametrize("command", ["push", "pull"])
def test_push_and_pull_refuse_while_a_merge_or_rebase_is_under_way(launched, command):
    """As `git pull` refuses to move a branch under an unconcluded merge. The VM would get a
    merge's files without the merge (its agent's commit would drop the second parent), and a
    rebase's detached HEAD is no reason to create a branch, as the old hint said."""
    repo, vm = launched
    repo.git("switch", "-q", "-c", "side")
    repo.write("side.txt", "side\n")
    repo.commit("side")
    repo.git("switch", "-q", "main")
    repo.write("README.md", "# main moves on\n")
    repo.commit("main")
    repo.vm_sh(vm, "echo vm > vm.txt && git add vm.txt && git commit -qm 'the VM agent'")
    repo.git("merge", "-q", "--no-commit", "--no-ff", "side")
    head = repo.git("rev-parse", "HEAD")
    proc = repo.slicer(command, vm, check=False)
    assert proc.returncode == 1 and b"a merge is in progress" in proc.stderr, proc.stderr
    assert b"git merge --abort" in proc.stderr and repo.git("rev-parse", "HEAD") == head
    repo.git("merge", "--abort")
    repo.git("rebase", "-q", "--exec", "false", "side", check=False)         # stops after the first pick
    proc = repo.slicer(command, vm, check=False)
    assert proc.returncode == 1 and b"a rebase is in progress" in proc.stderr, proc.stderr
    assert b"HEAD is detached" not in proc.stderr
    repo.git("rebase", "--abort")
    patch = repo.git("format-patch", "--stdout", "-1", "side")
    repo.write("side.txt", "in the way\n")
    repo.commit("conflicting side.txt")
    repo.git("am", "-q", input=patch.encode(), check=False)                   # stops: side.txt exists
    proc = repo.slicer(command, vm, check=False)
    assert proc.returncode == 1 and b"git am is in progress" in proc.stderr and b"git am --abort" in proc.stderr


def test_pull_unlinked_vm_is_a_clear_error(repo):
    proc = repo.slicer("pull", "vm-9", check=False)
    assert proc.returncode == 2
    assert b"not linked to VM vm-9" in proc.stderr


def test_round_trip_push_pull_push(launched):
    repo, vm = launched
    for i in range(3):
        repo.vm_sh(vm, "echo %d >> log.txt && git add log.txt && git commit -qm vm%d && echo w%d > wip.txt" % (i, i, i))
        repo.slicer("pull", vm)
        repo.write("host%d.txt" % i, "h\n")
        repo.commit("host %d" % i)
        repo.slicer("push")
        assert repo.vm_status(vm) == repo.status()
        assert repo.vm_git(vm, "rev-parse", "HEAD") == repo.git("rev-parse", "HEAD")


def test_push_waits_for_a_running_pull_and_gives_up_clearly(launched):
    """A pull holds the worktree exclusively; a push (e.g. from a hook) waits, then says why."""
    import subprocess
    import sys
    repo, vm = launched
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time\nfrom git_slicer.repo import Worktree\nfrom git_slicer import locks\n"
                               "with locks.hold(Worktree(sys.argv[1]), sys.argv[2], exclusive_worktree=True):\n"
                               "    print('held', flush=True); time.sleep(30)\n", str(repo.path), vm],
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        repo.write("x.txt", "x\n")
        env = dict(os.environ, GIT_SLICER_LOCK_WAIT="0.5")
        proc = repo.slicer("push", env=env, check=False)
        assert proc.returncode == 1 and b"another git-slicer operation" in proc.stderr
        assert "x.txt" not in repo.vm_status(vm)
    finally:
        holder.kill()
        holder.wait()
    repo.slicer("push")                     # the kernel released the lock with the process
    assert "x.txt" in repo.vm_status(vm)


def test_tree_diff_read_in_process_lists_what_git_diff_tree_lists(tmp_path):
    """The pull reads which paths two commits differ in through its one `git cat-file` process;
    it must list exactly what `git diff-tree -r --name-only` lists: a file turned into a
    directory and back, mode and symlink changes, gitlinks, deep additions and deletions."""
    from git_slicer.objects import TreeReader
    from git_slicer.repo import Worktree
    repo = Repo(tmp_path / "r")
    repo.path.mkdir()
    repo.git("init", "-q", "-b", "main")
    for name in ("a.txt", "d/x", "d/y", "f", "keep/deep/k.txt", "gone/g1", "gone/sub/g2", "m.sh"):
        repo.write(name, name + "\n")
    os.symlink("a.txt", repo.path / "l")
    repo.git("add", "-A")
    repo.git("update-index", "--add", "--cacheinfo", "160000,%s,mod" % ("1" * 40))
    repo.git("commit", "-qm", "first")          # not repo.commit: `add -A` would drop the gitlink
    first = repo.git("rev-parse", "HEAD").strip()
    repo.write("a.txt", "changed\n")
    os.unlink(repo.path / "d" / "x")
    os.unlink(repo.path / "d" / "y")
    os.rmdir(repo.path / "d")
    repo.write("d", "now a file\n")
    os.unlink(repo.path / "f")
    repo.write("f/z", "now a directory\n")
    (repo.path / "m.sh").chmod(0o755)
    os.unlink(repo.path / "l")
    os.symlink("d", repo.path / "l")
    repo.write("new/deep/er/n.txt", "new\n")
    repo.git("rm", "-rq", "gone")
    repo.git("add", "-A")
    repo.git("update-index", "--add", "--cacheinfo", "160000,%s,mod" % ("2" * 40))
    repo.git("commit", "-qm", "second")
    second = repo.git("rev-parse", "HEAD").strip()
    reader = TreeReader(Worktree(str(repo.path)))
    try:
        for a, b in ((first, second), (second, first), (first, first)):
            expect = repo.git("diff-tree", "-r", "--no-renames", "--name-only", a, b).split()
            assert sorted(reader.changed_paths(a, b)) == sorted(expect) and (a == b or expect)
    finally:
        reader.close()
