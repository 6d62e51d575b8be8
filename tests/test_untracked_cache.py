"""git's untracked cache (core.untrackedCache=true, or feature.manyFiles) remembers which
directories hold untracked files and trusts a directory whose mtime has not moved. A copy that
keeps mtimes (`cp -p`, `rsync -t`, `tar x`) puts a directory's mtime back after adding files to
it, and with core.trustctime=false git then lists none of them; on git 2.39 the cache was also
seen to go stale after ordinary changes (new and removed directories, files turned directories,
`git add`, `git rm --cached`). A scan that missed untracked files would not give the VM the
user's work (and a VM's scan would hide the agent's work from pull and `vm rm`), so no scan of
ours reads the cache, whatever the repository's settings; the user's cache is left as it is.
"""

from __future__ import annotations

import os
import subprocess
import time

from git_slicer.wire import overlay as overlay_mod


def _stale_cache(repo):
    """A user whose git serves `git status -uall` from the cache, and a file the cache misses:
    copied into a listed directory by a tool that puts the directory's mtime back."""
    for key, value in (("core.untrackedCache", "true"), ("status.showUntrackedFiles", "all"),
                       ("core.trustctime", "false")):
        repo.git("config", key, value)
    repo.write("drop/first.txt", "first\n")
    repo.git("status", "--porcelain")
    time.sleep(1.1)                       # the directory's mtime is no longer racy for the index
    repo.git("status", "--porcelain")     # the cache, recorded and saved
    st = os.stat(repo.path / "drop")
    repo.write("drop/copied.txt", "copied in\n")
    os.utime(repo.path / "drop", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert "copied.txt" not in repo.git("status", "--porcelain")       # git's own answer is stale


def test_no_scan_reads_gits_untracked_cache(repo):
    _stale_cache(repo)
    index = (repo.path / ".git" / "index").read_bytes()

    def run_git(args):
        return subprocess.run(["git", *args], cwd=repo.path, stdout=subprocess.PIPE, check=True).stdout
    for refresh in (False, True):          # status and pull; push (which may write the index)
        overlay = overlay_mod.scan(str(repo.path), run_git, refresh_index=refresh)
        assert set(overlay["files"]) == {"drop/first.txt", "drop/copied.txt"}
    assert b"UNTR" in (repo.path / ".git" / "index").read_bytes()        # still the user's cache
    assert (repo.path / ".git" / "index").read_bytes() == index


def test_push_sends_a_file_the_users_untracked_cache_misses(launched):
    repo, vm = launched
    _stale_cache(repo)
    repo.slicer("push")
    assert repo.vm_sh(vm, "cat drop/first.txt drop/copied.txt") == "first\ncopied in\n"


VM_STALE_CACHE = """
git config core.untrackedCache true && git config status.showUntrackedFiles all && git config core.trustctime false
mkdir -p drop && echo vm first > drop/first.txt && git status --porcelain >/dev/null
sleep 1.1 && git status --porcelain >/dev/null
python3 -c '
import os
st = os.stat("drop")
open("drop/copied.txt", "w").write("vm copied in\\n")
os.utime("drop", ns=(st.st_atime_ns, st.st_mtime_ns))'
git status --porcelain
"""


def test_pull_brings_a_vm_file_the_vms_untracked_cache_misses(launched):
    """The VM's side of the same rule: a VM whose git serves `git status` from a stale cache
    still has all of its work seen by the agent's scan (a cold agent: a full scan each time)."""
    repo, vm = launched
    repo.git("config", "slicer.local.agentIdle", "0")
    assert "copied.txt" not in repo.vm_sh(vm, VM_STALE_CACHE)                 # the VM's own git misses it
    repo.slicer("pull", vm)
    assert (repo.path / "drop" / "copied.txt").read_text() == "vm copied in\n"
    assert (repo.path / "drop" / "first.txt").read_text() == "vm first\n"
