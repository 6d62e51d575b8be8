"""Push: the VM gets a real, self-contained repository whose status equals the host's."""

from __future__ import annotations

import json
import os
import time

import pytest

from conftest import Repo, git, slicer


def test_first_push_reproduces_branch_history_and_status(repo):
    repo.write("src/app.py", "print('changed')\n")                 # unstaged edit
    repo.write("staged.txt", "staged\n")
    repo.git("add", "staged.txt")                                  # staged new file
    repo.write("src/lib.py", "VALUE = 2\n")
    repo.git("add", "src/lib.py")
    repo.write("src/lib.py", "VALUE = 3\n")                        # staged and then edited again
    repo.write("notes/todo.txt", "untracked\n")                    # untracked
    os.unlink(repo.path / "README.md")                             # unstaged deletion
    repo.git("rm", "-q", "--cached", "bin/run")                    # staged deletion, file kept
    result = repo.slicer_json("push", "--launch")
    vm = result["vm"]
    assert repo.vm_status(vm) == repo.status()
    assert repo.vm_git(vm, "diff") == repo.git("diff")
    assert repo.vm_git(vm, "diff", "--cached") == repo.git("diff", "--cached")
    assert repo.vm_git(vm, "log", "--format=%H %s") == repo.git("log", "--format=%H %s")
    assert repo.vm_git(vm, "symbolic-ref", "HEAD").strip() == "refs/heads/main"


def test_push_json_shape(repo):
    result = repo.slicer_json("push", "--launch")
    assert set(result) == {"vm", "worktree", "branch", "commit", "guest_path", "provider", "sent", "up_to_date",
                           "first_push", "launched", "submodules", "ok"}
    assert result["first_push"] is True and result["launched"] is True and result["submodules"] == []
    assert set(result["sent"]) == {"pack_bytes", "files", "file_bytes"}
    assert result["branch"] == "main"
    assert result["commit"] == repo.git("rev-parse", "HEAD").strip()
    assert result["worktree"] == str(repo.path)


def test_vm_repo_is_fresh_not_a_copy_of_host_git(repo):
    repo.git("config", "core.hooksPath", "/nonexistent")
    repo.git("config", "credential.helper", "store")
    repo.git("remote", "add", "origin", "git@github.com:acme/project.git")
    repo.git("remote", "add", "mirror", "https://user:s3cret@example.com/acme/project.git")
    repo.git("remote", "add", "local", "/srv/git/project.git")
    (repo.path / ".git" / "hooks" / "post-checkout").write_text("#!/bin/sh\necho HOOK\n")
    vm = repo.slicer_json("push", "--launch")["vm"]
    config = repo.vm_git(vm, "config", "--local", "--list")
    assert "hookspath" not in config.lower()
    assert "credential" not in config
    assert "s3cret" not in config
    assert repo.vm_git(vm, "remote", "get-url", "origin").strip() == "https://github.com/acme/project.git"
    assert repo.vm_git(vm, "remote", "get-url", "mirror").strip() == "https://example.com/acme/project.git"
    assert "local" not in repo.vm_git(vm, "remote").split()
    assert repo.vm_git(vm, "config", "user.name").strip() == "Test User"
    assert repo.vm_sh(vm, "ls .git/hooks | grep -v sample || true").strip() == ""


def test_every_push_puts_the_hosts_identity_and_remotes_back(repo):
    """The warm agent remembers what it set in .git/config; a change on either side is still
    made right by the next push."""
    repo.git("remote", "add", "origin", "https://example.com/acme/one.git")
    vm = repo.slicer_json("push", "--launch")["vm"]

    def push(content):
        repo.write("a.txt", content)
        repo.slicer("push", vm)

    push("1\n")        # the warm agent remembers the VM from here
    repo.git("remote", "set-url", "origin", "https://example.com/acme/two.git")       # the host changes
    repo.git("config", "user.email", "new@example.com")
    push("2\n")
    assert repo.vm_git(vm, "remote", "get-url", "origin").strip() == "https://example.com/acme/two.git"
    assert repo.vm_git(vm, "config", "user.email").strip() == "new@example.com"
    time.sleep(2.1)
    push("3\n")
    repo.vm_sh(vm, "git config user.email vm@example.com && git remote set-url origin https://evil.example/x.git"
               " && touch -d 2001-01-01 .git/config")                    # the VM changes them
    push("4\n")
    assert repo.vm_git(vm, "remote", "get-url", "origin").strip() == "https://example.com/acme/two.git"
    assert repo.vm_git(vm, "config", "user.email").strip() == "new@example.com"
    repo.vm_sh(vm, "git config --unset remote.origin.url")                 # a section with a fetch line only
    push("5\n")
    assert repo.vm_git(vm, "remote", "get-url", "origin").strip() == "https://example.com/acme/two.git"
    assert repo.vm_git(vm, "config", "remote.origin.fetch").strip() == "+refs/heads/*:refs/remotes/origin/*"


def test_delta_push_sends_only_new_objects_and_changed_files(launched):
    repo, vm = launched
    big = "".join("line %d\n" % i for i in range(20000))
    repo.write("big.txt", big)
    repo.commit("big file")
    first = repo.slicer_json("push")
    repo.write("small.txt", "tiny\n")
    repo.commit("one small file")
    second = repo.slicer_json("push")
    assert second["sent"]["pack_bytes"] < 2000 < first["sent"]["pack_bytes"]
    assert second["sent"]["files"] == 0
    assert repo.vm_git(vm, "rev-parse", "HEAD") == repo.git("rev-parse", "HEAD")
    assert repo.vm_status(vm) == repo.status() == ""


def test_delta_push_sends_only_files_changed_since_last_push(launched):
    repo, vm = launched
    repo.write("a.txt", "a\n")
    repo.write("b.txt", "b\n")
    assert repo.slicer_json("push")["sent"]["files"] == 2
    repo.write("b.txt", "b2\n")
    result = repo.slicer_json("push")
    assert result["sent"]["files"] == 1
    assert result["sent"]["pack_bytes"] == 0
    assert repo.vm_sh(vm, "cat a.txt b.txt") == "a\nb2\n"
    os.unlink(repo.path / "a.txt")
    repo.slicer("push")
    assert repo.vm_status(vm) == repo.status() == "?? b.txt\n"


def test_noop_push_is_up_to_date(launched):
    repo, vm = launched
    result = repo.slicer_json("push")
    assert result["up_to_date"] is True and "first_push" not in result
    assert result["sent"] == {"pack_bytes": 0, "files": 0, "file_bytes": 0}


def test_noop_push_leaves_the_link_record_alone(launched):
    """`pushed_at` is when a push last changed something: an agent's no-op push in a loop
    writes (and flushes) nothing on the host; the next push that sends something does."""
    repo, vm = launched
    record = repo.path / ".git" / "slicer" / "links" / ("%s.json" % vm)
    repo.slicer("push", vm)
    before = (record.read_bytes(), record.stat().st_ino, record.stat().st_mtime_ns)
    assert repo.slicer_json("push", vm)["up_to_date"] is True
    assert (record.read_bytes(), record.stat().st_ino, record.stat().st_mtime_ns) == before
    pushed_at = json.loads(before[0])["pushed_at"]
    repo.write("new.txt", "something to send\n")
    assert repo.slicer_json("push", vm)["up_to_date"] is False
    after = json.loads(record.read_text())
    assert after["pushed_at"] >= pushed_at and after["agreed_overlay"]["files"]["new.txt"], after


def test_push_refuses_to_destroy_unpulled_vm_commits(launched):
    repo, vm = launched
    repo.vm_sh(vm, "echo agent > agent.txt && git add agent.txt && git commit -qm 'agent work'")
    vm_head = repo.vm_git(vm, "rev-parse", "HEAD")
    repo.write("host.txt", "host\n")
    repo.commit("host work")
    proc = repo.slicer("push", check=False)
    assert proc.returncode == 1
    assert b"not pulled" in proc.stderr and b"Traceback" not in proc.stderr
    assert repo.vm_git(vm, "rev-parse", "HEAD") == vm_head
    # The refused push had saved its pending record while it scanned (the VM's HEAD was not the
    # host's): refused before anything was sent, it leaves none behind.
    link = json.loads((repo.path / ".git" / "slicer" / "links" / ("%s.json" % vm)).read_text())
    assert link["pending"] is None
    forced = repo.slicer_json("push", "--force")
    assert forced["commit"] == repo.git("rev-parse", "HEAD").strip()
    assert repo.vm_status(vm) == repo.status()


def test_push_refuses_to_destroy_unpulled_vm_file_edits(launched):
    repo, vm = launched
    repo.vm_sh(vm, "echo 'agent edit' >> README.md")
    proc = repo.slicer("push", check=False)
    assert proc.returncode == 1
    assert b"README.md" in proc.stderr
    assert "agent edit" in repo.vm_sh(vm, "cat README.md")


def test_slicerignore_paths_never_leave_the_host(repo):
    repo.write(".slicerignore", "node_modules/\n.env\n*.secret\n")
    repo.write(".env", "TOKEN=host\n")
    repo.write("deep/key.secret", "k\n")
    repo.write("node_modules/pkg/index.js", "x\n")
    repo.write("kept.txt", "kept\n")
    vm = repo.slicer_json("push", "--launch")["vm"]
    listing = repo.vm_sh(vm, "find . -path ./.git -prune -o -type f -print | sort")
    assert "./kept.txt" in listing and "./.slicerignore" in listing
    assert ".env" not in listing and "secret" not in listing and "node_modules" not in listing
    assert repo.vm_sh(vm, "git grep -l TOKEN || true").strip() == ""
    # The VM's own ignored-by-slicer files do not count as unpulled work.
    repo.vm_sh(vm, "mkdir -p node_modules/x && echo vm > node_modules/x/a.js")
    repo.write("kept.txt", "kept2\n")
    repo.slicer("push")
    assert repo.vm_sh(vm, "cat kept.txt") == "kept2\n"


def test_gitignored_files_only_with_include_ignored(repo):
    repo.write(".gitignore", "build/\n")
    repo.commit("ignore build")
    repo.write("build/out.bin", b"\x00\x01")
    vm = repo.slicer_json("push", "--launch")["vm"]
    assert repo.vm_sh(vm, "test -e build/out.bin && echo yes || echo no") == "no\n"
    repo.slicer("push", vm, "--include-ignored")
    assert repo.vm_sh(vm, "od -An -tx1 build/out.bin").split() == ["00", "01"]
    assert repo.vm_status(vm) == repo.status()


def test_symlinks_travel_as_links_never_their_targets(repo, tmp_path):
    secret = tmp_path / "outside-secret.txt"
    secret.write_text("host credentials\n")
    os.symlink(str(secret), repo.path / "creds")
    os.symlink("src", repo.path / "srcdir")
    vm = repo.slicer_json("push", "--launch")["vm"]
    assert repo.vm_sh(vm, "readlink creds").strip() == str(secret)
    assert repo.vm_sh(vm, "readlink app-link; readlink srcdir") == "src/app.py\nsrc\n"
    assert repo.vm_sh(vm, "cat creds 2>/dev/null || echo unreadable") == "unreadable\n"
    assert repo.vm_status(vm) == repo.status()


def test_exec_bits_and_mode_changes(repo):
    repo.write("tool.sh", "#!/bin/sh\n", mode=0o755)
    (repo.path / "src" / "app.py").chmod(0o755)                   # mode-only change of a tracked file
    vm = repo.slicer_json("push", "--launch")["vm"]
    assert repo.vm_sh(vm, "test -x tool.sh && test -x bin/run && test -x src/app.py && echo ok") == "ok\n"
    assert repo.vm_status(vm) == repo.status()
    assert repo.vm_git(vm, "diff") == repo.git("diff")


def test_binary_and_non_ascii_names(repo):
    blob = bytes(range(256)) * 64
    repo.write("données/été.bin", blob)
    repo.write("name with spaces.txt", "x\n")
    repo.write("日本語.txt", "こんにちは\n")
    repo.commit("unicode")
    repo.write("données/été.bin", blob[::-1])
    repo.write("новый.txt", "new\n")
    vm = repo.slicer_json("push", "--launch")["vm"]
    assert repo.vm_status(vm) == repo.status()
    digest = repo.vm_sh(vm, "sha1sum 'données/été.bin'").split()[0]
    import hashlib
    assert digest == hashlib.sha1(blob[::-1]).hexdigest()


def test_deletions_of_tracked_files_and_whole_directories(launched):
    repo, vm = launched
    repo.git("rm", "-rq", "src")
    repo.slicer("push")
    assert repo.vm_status(vm) == repo.status()
    repo.commit("drop src")
    repo.slicer("push")
    assert repo.vm_sh(vm, "test -e src && echo yes || echo no") == "no\n"
    assert repo.vm_status(vm) == ""


def test_untracked_file_removed_on_host_is_removed_in_vm(launched):
    repo, vm = launched
    repo.write("scratch/tmp.txt", "x\n")
    repo.slicer("push")
    os.unlink(repo.path / "scratch" / "tmp.txt")
    repo.slicer("push")
    assert repo.vm_sh(vm, "test -e scratch/tmp.txt && echo yes || echo no") == "no\n"


def test_fifo_in_worktree_is_skipped_without_blocking(repo):
    os.mkfifo(repo.path / "pipe")
    vm = repo.slicer_json("push", "--launch")["vm"]
    assert repo.vm_sh(vm, "test -e pipe && echo yes || echo no") == "no\n"


def test_shallow_push_with_depth(repo):
    for i in range(5):
        repo.write("n.txt", "%d\n" % i)
        repo.commit("c%d" % i)
    vm = repo.slicer_json("push", "--launch", "--depth", "2")["vm"]
    assert repo.vm_git(vm, "rev-list", "--count", "HEAD").strip() == "2"
    assert repo.vm_git(vm, "rev-parse", "--is-shallow-repository").strip() == "true"
    assert repo.vm_status(vm) == repo.status()
    repo.write("n.txt", "later\n")
    repo.commit("after shallow")
    repo.slicer("push")
    assert repo.vm_git(vm, "rev-parse", "HEAD") == repo.git("rev-parse", "HEAD")
    assert repo.vm_git(vm, "fsck", "--connectivity-only", check=False) is not None


@pytest.mark.parametrize("depth", [None, "3"])
def test_a_shallow_host_repository_gives_the_vm_a_shallow_one(repo, tmp_path, depth):
    """A shallow clone's history stops at its `shallow` commits: the VM's must say so too, or
    `git log` there fails on a parent it was never sent."""
    from conftest import Repo
    for i in range(6):
        repo.write("n.txt", "%d\n" % i)
        repo.commit("c%d" % i)
    clone = Repo(tmp_path / "clone")
    repo.git("clone", "-q", "--depth", "2", "file://%s" % repo.path, str(clone.path))
    vm = clone.slicer_json("push", "--launch", *(("--depth", depth) if depth else ()))["vm"]
    assert clone.vm_git(vm, "rev-parse", "--is-shallow-repository").strip() == "true"
    assert clone.vm_git(vm, "log", "--format=%s") == clone.git("log", "--format=%s") == "c5\nc4\n"
    clone.vm_sh(vm, "echo vm > vm.txt && git add vm.txt && git commit -qm 'the VM agent'")
    clone.slicer("pull", vm)
    assert clone.git("log", "-1", "--format=%s").strip() == "the VM agent"


def test_a_path_deeper_than_the_limit_is_a_clear_refusal_and_its_setting_takes_it(repo):
    """Uncommitted, a path deeper than 64 directories cannot travel (one clear line, not an
    internal error); committed, it does, and slicer.limit.pathDepth lets a pull write it."""
    deep = "/".join("d%d" % i for i in range(70)) + "/f.txt"
    repo.write(deep, "x\n")
    repo.commit("deep")
    vm = repo.slicer_json("push", "--launch")["vm"]
    repo.write(deep, "host edit\n")
    proc = repo.slicer("push", vm, check=False)
    assert proc.returncode == 1 and b"deeper than 64" in proc.stderr and b"internal error" not in proc.stderr
    repo.git("checkout", "-q", "--", ".")
    repo.vm_sh(vm, "echo vm > %s && git commit -qam deep" % deep)
    proc = repo.slicer("pull", vm, check=False)
    assert proc.returncode == 1 and b"slicer.limit.pathDepth" in proc.stderr
    repo.git("config", "slicer.limit.pathDepth", "100")
    repo.slicer("pull", vm)
    assert (repo.path / deep).read_text() == "vm\n"


@pytest.mark.parametrize("setting", ["core.autocrlf", "core.filemode", "info/attributes"])
def test_the_host_settings_that_decide_status_reach_the_vm(repo, setting):
    """core.autocrlf, core.filemode and info/attributes change how git compares files with
    blobs: without them the VM saw every line of a CRLF checkout changed (and its agent's
    commit -a stored CRLF blobs), or a mode change the host ignores."""
    repo.write("t.txt", "a\nb\n")
    repo.commit("t")
    if setting == "core.autocrlf":
        repo.git("config", "core.autocrlf", "true")
        (repo.path / "t.txt").unlink()
        repo.git("checkout", "--", "t.txt")                  # now in the host's checkout form: CRLF
        repo.write("t.txt", (repo.path / "t.txt").read_text() + "c\r\n")
    elif setting == "core.filemode":
        repo.git("config", "core.filemode", "false")
        (repo.path / "t.txt").chmod(0o755)
        repo.write("t.txt", "a\nb\nc\n")
    else:
        (repo.path / ".git" / "info").mkdir(exist_ok=True)
        (repo.path / ".git" / "info" / "attributes").write_text("*.txt eol=crlf\n")
        repo.write("t.txt", "a\r\nb\r\nc\r\n")
    vm = repo.slicer_json("push", "--launch")["vm"]
    assert repo.vm_status(vm) == repo.status() == " M t.txt\n"
    assert repo.vm_git(vm, "diff") == repo.git("diff")
    repo.vm_sh(vm, "git commit -qam 'the VM agent'")
    repo.slicer("pull", vm)
    assert repo.git("show", "HEAD:t.txt") == "a\nb\nc\n" and repo.git("diff", "HEAD~1", "--stat").count("|") == 1
    assert repo.status() == repo.vm_status(vm) == ""
    assert "mode" not in repo.git("show", "--summary", "HEAD")
    if setting != "info/attributes":                          # unset on the host: unset in the VM
        repo.git("config", "--unset", setting)
        repo.write("u.txt", "u\n")
        repo.slicer("push", vm)
        assert repo.vm_git(vm, "config", "--local", setting, check=False) == ""


def test_push_from_subdirectory_and_path_argument(repo, tmp_path):
    sub = repo.path / "src"
    vm = slicer_json_at(sub, "push", "--launch")["vm"]
    assert slicer_json_at(tmp_path, "push", vm, str(repo.path))["up_to_date"] is True


def slicer_json_at(cwd, *args):
    import json
    return json.loads(slicer(cwd, *args, "--json").stdout)


def test_linked_worktree_gets_its_own_repo_and_link(repo, tmp_path):
    other = tmp_path / "feature"
    repo.git("worktree", "add", "-q", "-b", "feature", str(other))
    wt = Repo(other)
    wt.write("feature.txt", "wip\n")
    vm = wt.slicer_json("push", "--launch")["vm"]
    assert wt.vm_git(vm, "symbolic-ref", "--short", "HEAD").strip() == "feature"
    assert wt.vm_status(vm) == wt.status() == "?? feature.txt\n"
    # The link lives in the linked worktree's own metadata, not the main one's.
    assert os.path.exists(repo.path / ".git" / "worktrees" / "feature" / "slicer" / "links" / (vm + ".json"))
    rows = repo.slicer_json("list")
    by_path = {r["worktree"]: r for r in rows}
    assert by_path[str(other)]["vm"] == vm
    assert by_path[str(repo.path)]["vm"] is None
    assert by_path[str(repo.path)]["current"] is True


def test_git_alias_runs_push(repo):
    repo.git("config", "alias.vmpush", "slicer push")
    repo.git("config", "alias.vmpush2", "!git slicer push")
    proc = git(repo.path / "src", "vmpush", "--launch", "--json")
    assert '"branch": "main"' in proc
    vm = repo.slicer_json("list")[0]["vm"]
    repo.write("x.txt", "x\n")
    git(repo.path / "src", "vmpush2", vm)
    assert repo.vm_status(vm) == repo.status()


def test_push_without_link_or_launch_is_a_clear_error(repo):
    proc = repo.slicer("push", check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith(b"error: this worktree is not linked to a VM")
    assert b"Traceback" not in proc.stderr


def test_push_to_missing_vm_is_a_clear_error(repo):
    proc = repo.slicer("push", "nosuchvm", check=False)
    assert proc.returncode == 1
    assert b"nosuchvm does not exist" in proc.stderr


def test_push_outside_a_repository(tmp_path):
    proc = slicer(tmp_path, "push", "--launch", check=False)
    assert proc.returncode == 1
    assert b"not inside a git worktree" in proc.stderr


@pytest.mark.parametrize("setup,needle", [
    (lambda r: r.git("checkout", "-q", "--detach"), b"detached"),
])
def test_push_refuses_detached_head(repo, setup, needle):
    setup(repo)
    proc = repo.slicer("push", "--launch", check=False)
    assert proc.returncode == 1 and needle in proc.stderr


def test_second_worktree_push_to_same_vm_path_is_refused_without_force(repo, tmp_path):
    vm = repo.slicer_json("push", "--launch")["vm"]
    clone = tmp_path / "clone" / "project"
    git(tmp_path, "clone", "-q", str(repo.path), str(clone))
    proc = slicer(clone, "push", vm, check=False)
    assert proc.returncode == 1
    assert b"did not push" in proc.stderr


def test_stat_cache_never_serves_a_changed_file(launched):
    """Unchanged dirty files are not re-hashed, but a rewrite with the same size and an old
    mtime put back (ctime still moves) is seen and sent."""
    repo, vm = launched
    old = 1_700_000_000
    path = repo.write("data.bin", b"A" * 4096)
    os.utime(path, (old, old))
    repo.slicer("push")
    cache = (repo.path / ".git" / "slicer" / "statcache.json").read_text()
    assert "data.bin" in cache
    path.write_bytes(b"B" * 4096)
    os.utime(path, (old, old))
    repo.slicer("push")
    assert repo.vm_sh(vm, "head -c 3 data.bin") == "BBB"
    assert repo.vm_status(vm) == repo.status()


def test_stat_cache_entries_are_trusted_only_when_stat_matches(tmp_path, monkeypatch):
    from git_slicer.wire.overlay import StatCache, hash_worktree_file
    monkeypatch.setattr(StatCache, "RACY_SECONDS", 0.3)
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    os.utime(path, (1_700_000_000, 1_700_000_000))
    time.sleep(0.4)                                 # its last change (ctime) has settled
    cache = StatCache()
    first = hash_worktree_file(str(path), "sha1", cache, "f")
    st = os.lstat(path)
    assert StatCache(cache.used).get("f", st) == list(first)
    path.write_bytes(b"y" * 100)                    # same size
    os.utime(path, (1_700_000_000, 1_700_000_000))  # same mtime
    assert StatCache(cache.used).get("f", os.lstat(path)) is None


def test_stat_cache_never_trusts_an_entry_hashed_while_the_file_was_racy(tmp_path, monkeypatch):
    """Hashed within RACY_SECONDS of its last change, a file could change again in the same
    timestamp tick with no trace in its stat data: such an entry is hashed again, however old it
    is by the time it is asked for (git's racy rule)."""
    from git_slicer.wire.overlay import StatCache, hash_worktree_file
    monkeypatch.setattr(StatCache, "RACY_SECONDS", 0.3)
    fresh = tmp_path / "g"
    fresh.write_bytes(b"z")
    cache = StatCache()
    hash_worktree_file(str(fresh), "sha1", cache, "g")          # racy when hashed
    time.sleep(0.4)
    assert StatCache(cache.used).get("g", os.lstat(fresh)) is None
    again = StatCache(cache.used)
    hash_worktree_file(str(fresh), "sha1", again, "g")          # settled now: hashed again, kept
    assert StatCache(again.used).get("g", os.lstat(fresh)) is not None


def test_a_file_that_vanishes_or_turns_into_a_symlink_while_it_is_hashed_is_looked_at_again(tmp_path):
    """Between the lstat and the open a file can go, or become a symlink: the scan is told the
    file changed (and reads it again), never an error that ends the agent's connection."""
    import threading
    from git_slicer.wire.overlay import FileChanged, hash_worktree_file
    path, aside = tmp_path / "f", tmp_path / "aside"
    aside.write_bytes(b"x" * 100)
    os.symlink("aside", tmp_path / "link")
    stop = threading.Event()

    def swap():
        while not stop.is_set():
            os.rename(aside, path)
            os.rename(path, aside)
            os.rename(tmp_path / "link", path)          # a symlink where the file was
            os.rename(path, tmp_path / "link")
    thread = threading.Thread(target=swap)
    thread.start()
    seen = set()
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and "changed" not in seen:
            try:
                seen.add("none" if hash_worktree_file(str(path)) is None else "entry")
            except FileChanged:
                seen.add("changed")
    finally:
        stop.set()
        thread.join()
    assert "changed" in seen, "the race was never hit"


def test_our_stat_cache_never_serves_a_stale_id_through_a_run_of_rewrites(repo, monkeypatch):
    """Our own cache of dirty and untracked files' ids (wire/overlay.StatCache), tried the way
    git's untracked cache was (tests/test_untracked_cache.py): a seeded run of rewrites (same size, other size, mtime put back, a file renamed
    over another, an exec bit, a file turned symlink) with pauses around the racy window
    (shortened to 50 ms here), each followed by a push's scan (which saves the cache) and one
    that hashes everything: the two must agree at every step. (A rewrite that puts the mtime
    back is caught twice, by the ctime in the key and by the racy rule against the current
    ctime; the run fails at once when both are gone.)"""
    import random
    import subprocess

    from git_slicer.repo import Worktree
    from git_slicer.scan import host_overlay
    from git_slicer.wire import overlay as overlay_mod
    monkeypatch.setattr(overlay_mod.StatCache, "RACY_SECONDS", 0.05)
    names = ["README.md", "src/app.py", "new-a.txt", "new-b.txt", "dir/new-c.bin"]
    for name in names:
        repo.write(name, "start %s\n" % name)
    (repo.path / ".git" / "slicer").mkdir()           # where a push keeps the cache
    rng = random.Random(7)

    def run_git(args):
        return subprocess.run(["git", *args], cwd=repo.path, stdout=subprocess.PIPE, check=True).stdout
    hits = 0
    for n in range(100):
        path = repo.path / rng.choice(names)
        op = rng.randrange(6)
        if path.is_symlink():
            path.unlink()
            path.write_text("back to a file %d\n" % n)
        elif op == 0:                                       # same size, other bytes
            data = path.read_bytes()
            path.write_bytes(bytes((b + 1) % 256 for b in data))
        elif op == 1:                                       # same size, mtime put back
            st = path.stat()
            data = path.read_bytes()
            path.write_bytes(data[::-1] if data[::-1] != data else data + b"!")
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        elif op == 2:                                       # another file renamed over it
            other = repo.path / rng.choice(names)
            if other != path and other.exists() and not other.is_symlink():
                st = path.stat()
                os.replace(other, path)
                os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
                other.write_text("refilled %d\n" % n)
        elif op == 3:
            path.chmod(path.stat().st_mode ^ 0o111)
        elif op == 4:
            path.unlink()
            os.symlink("README.md" if path.name != "README.md" else "src/app.py", path)
        else:
            path.write_text("grown %d %s\n" % (n, "x" * rng.randrange(40)))
        time.sleep(rng.choice([0, 0, 0.01, 0.03, 0.06, 0.08]))
        ours = host_overlay(Worktree(str(repo.path)), refresh_index=True)
        truth = overlay_mod.scan(str(repo.path), run_git, refresh_index=False)
        assert ours == truth, "step %d: %s" % (n, overlay_mod.changed_paths(truth, ours))
        hits += bool(json.loads((repo.path / ".git" / "slicer" / "statcache.json").read_text()))
    assert hits > 90                         # the cache was kept, not empty, through the run


def test_stat_cache_takes_a_vouched_entry_only_for_that_stat(tmp_path):
    from git_slicer.wire.overlay import StatCache, blob_oid, hash_worktree_file
    path = tmp_path / "placed"
    path.write_bytes(b"written by the agent")
    known = ["100644", blob_oid(b"written by the agent")]
    cache = StatCache()
    cache.vouch("placed", os.lstat(path), known)
    assert hash_worktree_file(str(path), "sha1", cache, "placed") == known
    assert StatCache(cache.used).get("placed", os.lstat(path)) is None     # the next scan hashes it again
    path.write_bytes(b"changed by the VM's user")   # other stat data: the vouched entry is not used
    assert hash_worktree_file(str(path), "sha1", cache, "placed") == ["100644", blob_oid(b"changed by the VM's user")]
