"""VM lifecycle and identity: default VMs for every verb, exec's refusals and exit codes, stale
links, `vm rm` and `worktree remove` guarding unpulled work, forced-pull backups, truthful status,
and the host's ignore rules in the VM."""

from __future__ import annotations

import json
import re
import subprocess


# -- defaults and exec ----------------------------------------------------------------------
def test_pull_and_exec_default_to_the_linked_vm(launched):
    repo, vm = launched
    repo.slicer("exec", "--", "sh", "-c", "echo v > v.txt && git add v.txt && git commit -qm from-vm")
    assert repo.slicer("exec", "--", "git", "log", "-1", "--format=%s").stdout == b"from-vm\n"
    result = repo.slicer_json("pull")
    assert result["vm"] == vm and result["fast_forward"] is True
    assert (repo.path / "v.txt").read_text() == "v\n"
    assert repo.slicer("pull").stdout.decode().startswith("main stays at")


def test_exec_refuses_a_vm_that_holds_no_repository_of_this_worktree(launched):
    repo, vm = launched
    repo.slicer("vm", "launch", "elsewhere")
    proc = repo.slicer("exec", "elsewhere", "--", "true", check=False)
    assert proc.returncode == 2
    assert b"holds no repository of this worktree" in proc.stderr and b"--cwd" in proc.stderr
    where = repo.slicer("exec", "elsewhere", "--cwd", ".", "--", "pwd").stdout
    assert where == repo.slicer("exec", "elsewhere", "--cwd", ".", "--", "sh", "-c", "echo $HOME").stdout


def test_exec_of_a_missing_command_exits_127_like_a_shell(launched):
    repo, vm = launched
    proc = repo.slicer("exec", "--", "no-such-command-here", check=False)
    assert proc.returncode == 127
    assert b"not found" in proc.stderr
    proc = repo.slicer("exec", vm, "--", "sh", "-c", "exit 5", check=False)
    assert proc.returncode == 5


def test_exec_refuses_an_option_it_does_not_know_instead_of_running_it(launched):
    """`--json` from habit before `--` (or with no `--`) is a usage error, not the command."""
    repo, vm = launched
    for args in ([vm, "--json", "--", "echo", "hi"], [vm, "--cwd", ".", "--bogus", "--", "echo", "hi"],
                 [vm, "--json", "echo", "hi"]):
        proc = repo.slicer("exec", *args, check=False)
        assert proc.returncode == 2, args
        if "--json" in args:                # the agent that typed it gets its error as JSON too
            assert json.loads(proc.stdout)["error"]["kind"] == "UsageError"
        else:
            assert proc.stdout == b""
        assert b"exec has no option --" in proc.stderr and b"after `--`" in proc.stderr
    # An option-like word after `--` belongs to the command; a command without `--` still runs.
    assert repo.slicer("exec", vm, "--", "echo", "--json").stdout == b"--json\n"
    assert repo.slicer("exec", vm, "echo", "hi").stdout == b"hi\n"


# -- status ---------------------------------------------------------------------------------
def test_a_first_push_that_never_reached_the_vm_is_named_alike_by_every_command(repo):
    """A first push stopped before the VM saw anything leaves its link pending. Every command
    then says so and names the command that finishes it; none says "not linked" with a hint
    (`push --launch VM`) that the pending link itself refuses."""
    import os
    vm = repo.slicer_json("vm", "launch")["name"]
    repo.write("notes.txt", "untracked\n")          # a file stream follows the pack: killed between them
    proc = repo.slicer("push", vm, check=False, env={**os.environ, "GIT_SLICER_TEST_CRASH_AT": "push:pack-sent"})
    assert proc.returncode != 0
    for args in (("status", vm), ("status", vm), ("pull", vm), ("log", vm), ("diff", vm)):
        proc = repo.slicer(*args, check=False)
        assert proc.returncode == 2, args
        assert proc.stderr.decode().splitlines() == [
            "error: VM %s has no state agreed with this worktree yet: its first push did not complete" % vm,
            "hint: git slicer push %s" % vm], args
    repo.slicer("push", vm)
    assert repo.slicer_json("status", vm)["in_sync"] is True


def test_status_measures_each_side_against_the_agreed_state(launched):
    repo, vm = launched
    repo.write("notes.txt", "host's own untracked file\n")
    repo.write("README.md", "# edited on the host\n")
    repo.slicer("push")
    repo.vm_sh(vm, "echo v > v.txt && git add v.txt && git commit -qm v && echo more >> src/lib.py")
    result = repo.slicer_json("status")
    assert result["vm_side"]["ahead"] == 1
    assert result["vm_side"]["changed_since_sync"] == ["src/lib.py", "v.txt"]
    assert result["host"]["changed_since_sync"] == []
    repo.commit("host commits its edit", "README.md")
    repo.write("host-new.txt", "n\n")
    result = repo.slicer_json("status")
    assert result["host"]["changed_since_sync"] == ["README.md", "host-new.txt"]
    assert result["vm_side"]["changed_since_sync"] == ["src/lib.py", "v.txt"]
    # README.md moved into a commit as it was synced: counted (its index entry moved), and
    # marked, so that a count larger than `diff --stat`'s surprises nobody.
    assert result["host"]["content_as_synced"] == ["README.md"] and result["vm_side"]["content_as_synced"] == []
    text = repo.slicer("status").stdout.decode()
    assert "README.md (committed or staged, content as synced)" in text and "host-new.txt\n" in text


# -- pull --force backups -------------------------------------------------------------------
def _host_state(repo):
    """Everything a forced pull may replace: branch tip, index, and every worktree byte."""
    return (repo.git("rev-parse", "HEAD"), repo.git("ls-files", "-s"), repo.status(),
            repo.fingerprint(skip=(".git",)))


def test_forced_pull_backup_restores_every_replaced_host_byte(launched):
    import re
    import subprocess
    repo, vm = launched
    repo.vm_sh(vm, "echo vm > vm.txt && git add vm.txt && git commit -qm 'vm side' && "
                   "echo 'vm readme' > README.md && echo 'vm notes' > notes.txt")
    repo.write("host.txt", "host\n")
    repo.commit("host side")                                 # diverged: the pull resets
    repo.write("src/app.py", "staged\n")
    repo.git("add", "src/app.py")
    repo.write("src/app.py", "unstaged on top\n")
    repo.write("README.md", "host readme\n")
    repo.write("notes.txt", "host notes, never committed\n")
    before = _host_state(repo)
    out = repo.slicer("pull", "--force").stdout.decode()
    assert "fast-forwarded" not in out and re.search(r"^reset main \w+\.\.\w+ to VM %s" % vm, out, re.M)
    assert (repo.path / "notes.txt").read_text() == "vm notes\n"
    ref = re.search(r"host state saved under (\S+)", out).group(1)
    assert repo.git("for-each-ref", "--format=%(refname)", "refs/slicer/backup/").split() == [ref]
    restore = re.search(r"restore with: (.+)$", out, re.M).group(1)
    subprocess.run(restore, shell=True, cwd=repo.path, check=True)
    assert _host_state(repo) == before


def test_forced_pull_names_its_one_backup_ref_in_json(launched):
    repo, vm = launched
    repo.vm_sh(vm, "echo vm > vm.txt && git add vm.txt && git commit -qm 'vm side'")
    repo.write("host.txt", "host\n")
    host_tip = repo.commit("host side")
    repo.write("untracked.txt", "only here\n")
    result = repo.slicer_json("pull", "--force")
    assert result["reset"] is True and result["fast_forward"] is False
    backup = result["backup"]
    assert repo.git("for-each-ref", "--format=%(refname)", "refs/slicer/backup/").split() == [backup["ref"]]
    assert repo.git("rev-parse", backup["ref"] + "^1").strip() == host_tip == backup["old_tip"]
    assert backup["restore"].startswith("git reset -q --hard %s " % backup["ref"])
    assert (repo.path / "untracked.txt").read_text() == "only here\n"      # not the VM's: untouched


# -- identity -------------------------------------------------------------------------------
def _vm_root(home):
    return home / ".local" / "share" / "git-slicer" / "vms"


def test_a_link_whose_vm_was_replaced_is_stale_and_nothing_reaches_the_new_vm(launched, hermetic_seal, tmp_path):
    import shutil
    from conftest import Repo
    repo, vm = launched
    shutil.rmtree(_vm_root(hermetic_seal) / vm)              # the VM vanished behind our back
    other = Repo(tmp_path / "other")
    other.path.mkdir()
    other.git("init", "-q", "-b", "main")
    other.write("theirs.txt", "someone else's project\n")
    other.commit("theirs")
    assert other.slicer_json("push", "--launch")["vm"] == vm          # the name is free again
    repo.write("secret-plan.txt", "for my VM only\n")
    for args in (("push",), ("pull",), ("status",), ("exec", "--", "true")):
        proc = repo.slicer(*args, check=False)
        assert proc.returncode == 1, args
        assert b"link to VM %s is stale" % vm.encode() in proc.stderr and b"git slicer unlink" in proc.stderr
    listing = other.vm_sh(vm, "ls -a ~").split()
    assert "project" not in listing and "other" in listing


def test_every_hint_names_a_command_that_works(launched, hermetic_seal, tmp_path):
    """Hints that led nowhere: `push VM` for a VM that does not exist, a push for a VM another
    worktree links, a plain push after unlinking a VM that is gone; `git push` to a VM said
    nothing; a worktree's path alone was taken for a VM name."""
    import shutil
    from conftest import Repo, slicer
    repo, vm = launched
    proc = repo.slicer("pull", "nosuch", check=False)
    assert b"git slicer push --launch nosuch" in proc.stderr, proc.stderr
    other = Repo(tmp_path / "second")
    repo.git("worktree", "add", "-q", "-b", "second", str(other.path))
    theirs = other.slicer_json("push", "--launch")["vm"]
    proc = repo.slicer("status", theirs, check=False)
    assert str(other.path).encode() in proc.stderr and b"git -C %s slicer" % str(other.path).encode() in proc.stderr
    assert slicer(tmp_path, "status", str(other.path), "--json").returncode == 0       # a path alone
    proc = subprocess.run(["git", "push", "slicer::" + vm, "main"], cwd=repo.path, capture_output=True)
    assert proc.returncode != 0 and b"only fetch" in proc.stderr and b"git slicer push" in proc.stderr
    shutil.rmtree(_vm_root(hermetic_seal) / vm)              # the VM vanished behind our back
    hint = re.search(rb"then `git slicer (push [^`]+)`", repo.slicer("status", check=False).stderr)
    assert hint and b"--launch" in hint.group(1)
    repo.slicer("unlink", vm)
    repo.slicer(*hint.group(1).decode().split())
    assert repo.vm_status(vm) == repo.status()


def test_a_vm_that_answers_with_another_identity_is_refused(launched):
    repo, vm = launched
    repo.vm_sh(vm, "echo someone-else > ~/.git-slicer/vm-id")
    repo.write("new.txt", "n\n")
    proc = repo.slicer("push", check=False)
    assert proc.returncode == 1 and b"stale" in proc.stderr and b"another identity" in proc.stderr
    repo.vm_sh(vm, "rm ~/.git-slicer/vm-id")      # the provider's record still vouches: taken again
    repo.slicer("push")
    assert repo.vm_status(vm) == repo.status()


def test_a_link_from_before_vm_ids_never_adopts_a_vm_that_has_one(launched):
    """A link saved before VMs had ids, to a VM whose record has one: that VM was made after the
    link, so every command refuses it (one line and a way out) instead of adopting its id."""
    import json
    from hostile_agent import vm_home
    repo, vm = launched
    link_file = repo.path / ".git" / "slicer" / "links" / ("%s.json" % vm)
    link = json.loads(link_file.read_text())
    link["vm_id"] = ""
    link_file.write_text(json.dumps(link))
    before = link_file.read_bytes()
    repo.write("plan.txt", "for my VM only\n")
    for args in (("push",), ("pull",), ("status",), ("exec", "--", "touch", "ran"), ("shell",)):
        proc = repo.slicer(*args, check=False)
        lines = proc.stderr.decode().splitlines()
        assert proc.returncode == 1, args
        assert "link to VM %s is stale: it was made before VMs had ids" % vm in lines[0], lines
        assert lines[1].startswith("hint: `git slicer unlink %s`" % vm), lines
    assert link_file.read_bytes() == before
    assert not (vm_home(vm) / repo.path.name / "plan.txt").exists()
    assert not (vm_home(vm) / repo.path.name / "ran").exists()


def test_a_link_from_before_vm_ids_to_a_vm_that_took_one_since_is_refused_and_kept_by_vm_rm(launched, hermetic_seal):
    """An old VM (its record has no id) that took an id since, through another link: a link saved
    before VMs had ids cannot tell whether it is its VM. Push refuses it, and `vm rm` keeps the VM
    (work this link has not pulled may be there) unless --force."""
    import json
    repo, vm = launched
    record_file = _vm_root(hermetic_seal) / vm / "vm.json"
    record = json.loads(record_file.read_text())
    del record["id"]                                        # as recorded before VMs had ids
    record_file.write_text(json.dumps(record))
    link_file = repo.path / ".git" / "slicer" / "links" / ("%s.json" % vm)
    link = json.loads(link_file.read_text())
    link["vm_id"] = ""
    link_file.write_text(json.dumps(link))
    repo.write("plan.txt", "p\n")
    proc = repo.slicer("push", check=False)
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == 1 and "the VM answering as %s has one of its own" % vm in lines[0], lines
    assert lines[1].startswith("hint: if it is yours: `git slicer unlink %s`" % vm), lines
    proc = repo.slicer("vm", "rm", vm, check=False)
    assert proc.returncode == 1 and b"cannot be checked" in proc.stderr and b"--force" in proc.stderr
    assert _vm_names(repo) == [vm]
    assert repo.slicer_json("vm", "rm", "--force", vm)["removed"] == [vm]


def test_launch_never_replaces_a_link_and_names_are_shared_across_providers(launched, hermetic_seal):
    repo, vm = launched
    link_file = repo.path / ".git" / "slicer" / "links" / ("%s.json" % vm)
    before = link_file.read_bytes()
    proc = repo.slicer("push", "--launch", vm, "--provider", "qemu", check=False)
    assert proc.returncode == 2 and b"already linked to a VM named %s" % vm.encode() in proc.stderr
    assert link_file.read_bytes() == before
    (_vm_root(hermetic_seal) / ".qemu" / "vm-2").mkdir(parents=True)   # a qemu VM holds vm-2
    assert repo.slicer_json("vm", "launch")["name"] == "vm-3"
    proc = repo.slicer("vm", "launch", "vm-2", check=False)
    assert proc.returncode == 2 and b"shared by the local and qemu providers" in proc.stderr


def test_a_failed_push_launch_leaves_no_vm_behind(repo):
    repo.git("config", "slicer.local.python", "/nonexistent/python3")
    proc = repo.slicer("push", "--launch", check=False)
    assert proc.returncode == 1 and b"removed new VM" in proc.stderr
    repo.git("config", "--unset", "slicer.local.python")
    assert repo.slicer_json("vm", "list") == []
    assert repo.slicer_json("list")[0]["vm"] is None


# -- removing VMs and worktrees -------------------------------------------------------------
def _vm_names(repo):
    return [v["name"] for v in repo.slicer_json("vm", "list")]


def test_vm_rm_refuses_unpulled_work_in_any_worktree_then_retires_every_link(launched, tmp_path):
    from conftest import Repo, slicer
    repo, vm = launched
    other = Repo(tmp_path / "second")
    repo.git("worktree", "add", "-q", "-b", "second", str(other.path))
    other.slicer("push", vm)                                  # the same VM, linked from two worktrees
    other.vm_sh(vm, "echo work > work.txt")
    for where in (repo.path, tmp_path):                       # also from outside the repository
        proc = slicer(where, "vm", "rm", vm, check=False)
        assert proc.returncode == 1, where
        assert b"not pulled" in proc.stderr and str(other.path).encode() in proc.stderr
    assert _vm_names(repo) == [vm]
    other.slicer("pull")
    result = repo.slicer_json("vm", "rm", vm)
    assert result["removed"] == [vm]
    assert sorted(r["worktree"] for r in result["retired_links"]) == sorted([str(repo.path), str(other.path)])
    assert [row["vm"] for row in repo.slicer_json("list")] == [None, None]
    assert _vm_names(repo) == []


def test_vm_rm_refuses_when_a_links_state_cannot_be_read_unless_forced(launched):
    repo, vm = launched
    repo.git("config", "slicer.local.python", "/nonexistent/python3")     # the agent cannot start
    proc = repo.slicer("vm", "rm", vm, check=False)
    assert proc.returncode == 1 and b"cannot be read" in proc.stderr and b"--force" in proc.stderr
    assert _vm_names(repo) == [vm]
    assert repo.slicer_json("vm", "rm", "--force", vm)["removed"] == [vm]
    assert _vm_names(repo) == [] and repo.slicer_json("list")[0]["vm"] is None


def test_worktree_remove_removes_the_vms_it_launched_and_keeps_the_rest(launched, tmp_path):
    from conftest import Repo, slicer
    repo, shared = launched
    paths = {n: tmp_path / n for n in ("fix", "keep", "busy")}
    vms = {n: repo.slicer_json("worktree", "add", str(p), "-b", n, "--launch")["pushed"]["vm"]
           for n, p in paths.items()}
    Repo(paths["fix"]).slicer("push", shared)                  # linked, but launched by the main worktree
    out = repo.slicer("worktree", "remove", str(paths["fix"])).stdout.decode()
    assert "removed VM %s (launched by this worktree)" % vms["fix"] in out
    assert "kept VM %s (not launched by this worktree)" % shared in out
    assert sorted(_vm_names(repo)) == sorted([shared, vms["keep"], vms["busy"]])
    assert repo.slicer_json("status", shared)["in_sync"] is True          # the main worktree's link stays
    result = repo.slicer_json("worktree", "remove", str(paths["keep"]), "--keep-vms")
    assert result["vms"] == [{"vm": vms["keep"], "removed": False, "reason": "kept: --keep-vms"}]
    Repo(paths["busy"]).vm_sh(vms["busy"], "echo unpulled > u.txt")
    proc = repo.slicer("worktree", "remove", str(paths["busy"]), check=False)
    assert proc.returncode == 1 and b"not pulled" in proc.stderr and paths["busy"].exists()
    result = repo.slicer_json("worktree", "remove", str(paths["busy"]), "--force")
    assert result["vms"][0]["removed"] is False and "not pulled" in result["vms"][0]["reason"]
    assert not paths["busy"].exists() and vms["busy"] in _vm_names(repo)     # the work survives in the VM
    # With the worktree went its link: the repository remembers the VM kept with that work, so a
    # later `vm rm` still refuses, and says how to fetch its commits.
    for where in (repo.path, tmp_path):                       # also from outside the repository
        proc = slicer(where, "vm", "rm", vms["busy"], check=False)
        assert proc.returncode == 1 and b"not pulled" in proc.stderr and str(paths["busy"]).encode() in proc.stderr
    fetch = re.search(rb"`git (fetch slicer://\S+ busy)`", proc.stderr)
    assert fetch, proc.stderr
    repo.git(*fetch.group(1).decode().split())                            # the hint works
    assert repo.git("rev-parse", "FETCH_HEAD") == repo.git("rev-parse", "busy")
    assert vms["busy"] in _vm_names(repo)
    assert repo.slicer_json("vm", "rm", "--force", vms["busy"])["removed"] == [vms["busy"]]
    assert vms["busy"] not in _vm_names(repo)


def test_a_worktree_remove_that_fails_keeps_no_record_of_its_vm(launched, tmp_path):
    """git refuses to remove a locked worktree: its link stays, so once its work is pulled,
    `vm rm` goes ahead (no record of a removal that never happened stands in the way)."""
    from conftest import Repo
    repo, _ = launched
    path = tmp_path / "locked"
    vm = repo.slicer_json("worktree", "add", str(path), "-b", "locked", "--launch")["pushed"]["vm"]
    wt = Repo(path)
    wt.vm_sh(vm, "echo unpulled > u.txt")
    repo.git("worktree", "lock", str(path))
    assert repo.slicer("worktree", "remove", str(path), "--force", check=False).returncode != 0
    assert path.exists()
    wt.slicer("pull", vm)
    assert repo.slicer_json("vm", "rm", vm)["removed"] == [vm]


def test_vm_commits_on_another_branch_are_unpulled_work_until_a_pull_imports_them(launched):
    """The agent commits on a branch of its own and goes back to the linked one: status was
    "in sync" and `vm rm` deleted that commit. (`log` fetches objects, but no ref keeps them.)"""
    repo, vm = launched
    repo.vm_sh(vm, "git switch -q -c experiment && echo e > e.txt && git add e.txt && git commit -qm experiment "
                   "&& git switch -q main")
    repo.slicer("log", vm)
    status = repo.slicer_json("status", vm)
    assert status["in_sync"] is True and status["vm_side"]["unpulled_branches"] == ["experiment"]
    assert "commits on other branches: experiment" in repo.slicer("status", vm).stdout.decode()
    for args in (("vm", "rm", vm), ("unlink", vm)):
        proc = repo.slicer(*args, check=False)
        assert proc.returncode == 1 and b"commits on branch experiment" in proc.stderr, args
    repo.slicer("pull", vm)
    assert repo.git("rev-parse", "refs/slicer/%s/experiment" % vm) == repo.vm_git(vm, "rev-parse", "experiment")
    assert repo.slicer_json("status", vm)["vm_side"]["unpulled_branches"] == []
    assert repo.slicer_json("vm", "rm", vm)["removed"] == [vm]


def test_a_vm_stash_is_unpulled_work(launched):
    """The agent stashes its change: the VM's worktree is clean and status said "in sync", so
    `vm rm` deleted the only copy. No pull brings a stash home: it counts until it is gone."""
    repo, vm = launched
    repo.vm_sh(vm, "echo stashed >> README.md && git stash -q")
    status = repo.slicer_json("status", vm)
    assert status["in_sync"] is True and status["vm_side"]["stash"] is True
    assert "the VM has a stash" in repo.slicer("status", vm).stdout.decode()
    for args in (("vm", "rm", vm), ("unlink", vm)):
        proc = repo.slicer(*args, check=False)
        assert proc.returncode == 1 and b"a stash" in proc.stderr, (args, proc.stderr)
        assert b"no pull brings home (`git slicer exec %s -- git stash pop`" % vm.encode() in proc.stderr
    repo.vm_sh(vm, "git stash pop -q && git commit -qam 'from the stash'")
    repo.slicer("pull", vm)
    assert "stashed" in (repo.path / "README.md").read_text()
    assert repo.slicer_json("status", vm)["vm_side"]["stash"] is False
    assert repo.slicer_json("vm", "rm", vm, vm)["removed"] == [vm]        # a name given twice: once


def test_unlink_refuses_while_the_vm_holds_unpulled_work(launched):
    """The link is what stops `vm rm` deleting unpulled work: unlinking first would let it."""
    repo, vm = launched
    repo.vm_sh(vm, "echo work >> README.md && git commit -qam 'the VM agent' && echo more > more.txt")
    proc = repo.slicer("unlink", vm, check=False)
    assert proc.returncode == 1 and b"not pulled" in proc.stderr and b"unlink --force" in proc.stderr
    assert repo.slicer_json("list")[0]["vm"] == vm
    assert repo.slicer("vm", "rm", vm, check=False).returncode == 1
    repo.slicer("pull", vm)
    assert repo.slicer_json("unlink", vm)["unlinked"] is True
    assert (repo.path / "more.txt").read_text() == "more\n"
    repo.slicer("push", vm, "--force")                    # linked again; new VM work, then --force
    repo.vm_sh(vm, "echo again > again.txt")
    assert repo.slicer_json("unlink", "--force", vm)["unlinked"] is True
    assert repo.slicer_json("list")[0]["vm"] is None


# -- the host's ignore rules in the VM ------------------------------------------------------
def test_every_host_ignore_source_shapes_the_vm_view(repo, hermetic_seal, tmp_path):
    (hermetic_seal / ".config" / "git").mkdir(parents=True)
    (hermetic_seal / ".config" / "git" / "ignore").write_text("build/\n")     # default core.excludesFile
    (repo.path / ".git" / "info").mkdir(exist_ok=True)
    (repo.path / ".git" / "info" / "exclude").write_text("# mine\n*.tmp\n!keep.tmp\n")
    repo.write(".gitignore", "*.log\n")
    for path in ("a.tmp", "keep.tmp", "build/out.o", "run.log", "notes.txt"):
        repo.write(path, path + "\n")
    vm = repo.slicer_json("push", "--launch", "--include-ignored")["vm"]
    assert repo.vm_status(vm) == repo.status()
    assert repo.vm_sh(vm, "cat build/out.o a.tmp") == "build/out.o\na.tmp\n"     # sent, and ignored there
    repo.write("more.txt", "m\n")
    assert repo.slicer_json("push")["up_to_date"] is False                   # not refused
    assert repo.vm_status(vm) == repo.status()
    other = tmp_path / "global-ignore"
    other.write_text("*.cache\n")
    repo.git("config", "core.excludesFile", str(other))
    repo.write("x.cache", "c\n")
    repo.slicer("push", "--include-ignored")
    assert repo.vm_status(vm) == repo.status()
    exclude = repo.vm_sh(vm, "cat .git/info/exclude")
    assert "*.cache" in exclude and "*.tmp" in exclude and str(other) not in exclude   # patterns, not paths
    (hermetic_seal / "home-ignore").write_text("*.mine\n")
    repo.git("config", "core.excludesFile", "~/home-ignore")                # expanded as git expands it
    repo.write("y.mine", "m\n")
    repo.slicer("push")
    assert repo.vm_status(vm) == repo.status() and "*.mine" in repo.vm_sh(vm, "cat .git/info/exclude")


def test_worktree_remove_with_a_link_to_a_vanished_vm(repo, hermetic_seal, tmp_path):
    import shutil
    target = tmp_path / "gone"
    vm = repo.slicer_json("worktree", "add", str(target), "-b", "gone", "--launch")["pushed"]["vm"]
    shutil.rmtree(_vm_root(hermetic_seal) / vm)              # nothing left to lose
    result = repo.slicer_json("worktree", "remove", str(target))
    assert not target.exists() and result["vms"][0]["removed"] is False
    assert "stale" in result["vms"][0]["reason"]
