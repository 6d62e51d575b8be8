"""A new user's first ten minutes: the VM's own user and prompt, `pull <TAB>`, helpful conflict
hints, and `push --all` doing what README says."""

from __future__ import annotations

import os

import pytest

from conftest import HAVE_BWRAP, Repo, run, slicer_in_pty

needs_bwrap = pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap not installed")
GIT_COMPLETION = "/usr/share/bash-completion/completions/git"


@needs_bwrap
def test_the_vm_has_its_own_user_hostname_and_prompt(launched):
    repo, vm = launched
    out = repo.vm_sh(vm, "id -un; id -gn; hostname; echo $HOME; cut -d: -f1 /etc/passwd | tr '\\n' ' '")
    assert out.splitlines() == ["agent", "agent", vm, "/home/agent", "root agent nobody "]
    output, _ = slicer_in_pty(repo.path, "shell", vm, typed=b"exit 0\n")
    assert ("[%s] " % vm).encode() in output


@pytest.mark.skipif(not os.path.exists(GIT_COMPLETION), reason="git's bash completion not installed")
def test_pull_completes_the_linked_vms(launched):
    repo, vm = launched
    repo.slicer("vm", "launch", "aaa-unlinked")
    script = ('source %s; eval "$(git slicer completion bash)"\n'
              'complete_line() { COMP_LINE="$1"; COMP_POINT=${#COMP_LINE}; read -ra COMP_WORDS <<< "$1";'
              ' [[ "$1" == *" " ]] && COMP_WORDS+=(""); COMP_CWORD=$((${#COMP_WORDS[@]}-1));'
              ' __git_wrap__git_main; echo "${COMPREPLY[*]}"; }\n'
              'complete_line "git slicer pull "; complete_line "git slicer exec "\n' % GIT_COMPLETION)
    out = run(["bash", "-c", script], cwd=repo.path).stdout.decode().splitlines()
    assert out[0].split() == [vm]                      # pull needs a link: only linked VMs
    assert out[1].split() == [vm, "aaa-unlinked"]      # elsewhere: linked first, then the others


@needs_bwrap
def test_conflict_hint_says_stash_u_when_an_untracked_file_is_involved(launched):
    repo, vm = launched
    repo.vm_sh(vm, "echo vm > notes.txt")
    repo.write("notes.txt", "mine\n")
    proc = repo.slicer("pull", vm, check=False)
    assert proc.returncode == 1 and b"git stash -u, as notes.txt is untracked" in proc.stderr
    repo.slicer("pull", vm, "--force")
    repo.vm_sh(vm, "echo vm2 >> README.md")
    repo.write("README.md", "host\n")
    proc = repo.slicer("pull", vm, check=False)
    assert proc.returncode == 1 and b"(git stash)" in proc.stderr


@needs_bwrap
def test_push_all_pushes_this_worktree_to_its_own_linked_vms(repo, tmp_path):
    first = repo.slicer_json("push", "--launch")["vm"]
    second = repo.slicer_json("push", "--launch")["vm"]
    other = Repo(tmp_path / "other")
    repo.git("worktree", "add", "-q", "-b", "other", str(other.path))
    elsewhere = other.slicer_json("push", "--launch")["vm"]
    repo.write("new.txt", "new\n")
    outcome = repo.slicer_json("push", "--all")
    assert sorted(r["vm"] for r in outcome["results"]) == sorted([first, second]) and outcome["failed"] == []
    assert all(r["sent"]["files"] == 1 for r in outcome["results"])
    assert other.slicer_json("status", elsewhere)["host"]["changed_since_sync"] == []
    proc = repo.slicer("push", check=False)
    assert proc.returncode == 2 and b"several VMs" in proc.stderr
