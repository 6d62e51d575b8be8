"""VM lifecycle and identity: default VMs for every verb, exec's refusals and exit codes, stale
links, `vm rm` and `worktree remove` guarding unpulled work, forced-pull backups, truthful status,
and the host's ignore rules in the VM."""

from __future__ import annotations


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


# -- status ---------------------------------------------------------------------------------
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
