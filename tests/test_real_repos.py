"""Pull works where `git checkout` works: line-ending conversion (eol attributes and
core.autocrlf), filter drivers and Git LFS pointers, sparse-checkout, and commits that turn a
file into a directory or back. Real repositories with real attributes and config, real agents
in real local sandboxes; whether the host changed a file is decided as `git status` decides it.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import Repo, new_repo


def crlf_repo(tmp_path, attributes="*.txt eol=crlf\n", config=()) -> Repo:
    path = tmp_path / "crlf"
    path.mkdir()
    repo = Repo(path)
    repo.git("init", "-q", "-b", "main")
    for key, value in config:
        repo.git("config", key, value)
    repo.write(".gitattributes", attributes)
    repo.write("notes.txt", "one\ntwo\n")
    repo.write("other.txt", "x\n")
    repo.write("plain.md", "plain\n")
    repo.commit("initial")
    for name in ("notes.txt", "other.txt", "plain.md"):       # the checkout form, as a clone has it
        os.unlink(path / name)
    repo.git("checkout", "--", ".")
    return repo


def test_eol_crlf_files_pull_both_edited_and_committed(tmp_path):
    repo = crlf_repo(tmp_path)
    assert (repo.path / "notes.txt").read_bytes() == b"one\r\ntwo\r\n"
    vm = repo.slicer_json("push", "--launch")["vm"]
    repo.vm_sh(vm, "printf 'one\\r\\nTWO\\r\\n' > notes.txt && printf 'y\\r\\n' > other.txt && "
                   "git commit -qm 'vm: other' other.txt")
    result = repo.slicer_json("pull", vm)
    assert result["fast_forward"] is True
    assert (repo.path / "notes.txt").read_bytes() == b"one\r\nTWO\r\n"
    assert (repo.path / "other.txt").read_bytes() == b"y\r\n"          # as checkout writes it
    assert repo.status() == " M notes.txt\n" == repo.vm_status(vm)
    # A real conflict is still one; --force takes the VM's side after a backup.
    repo.vm_sh(vm, "printf 'vm\\r\\n' > other.txt")
    repo.write("other.txt", b"host\r\n")
    proc = repo.slicer("pull", vm, check=False)
    assert proc.returncode == 1 and b"other.txt" in proc.stderr
    forced = repo.slicer_json("pull", vm, "--force")
    assert forced["conflicts"] == ["other.txt"]
    assert (repo.path / "other.txt").read_bytes() == b"vm\r\n"


def test_autocrlf_host_pulls_without_false_conflicts(tmp_path):
    repo = crlf_repo(tmp_path, attributes="*.bin -text\n", config=[("core.autocrlf", "true")])
    assert (repo.path / "plain.md").read_bytes() == b"plain\r\n"
    vm = repo.slicer_json("push", "--launch")["vm"]
    repo.vm_sh(vm, "echo agent >> plain.md && git commit -qam 'vm: plain' && echo wip >> notes.txt")
    repo.slicer("pull", vm)
    assert (repo.path / "plain.md").read_bytes() == b"plain\r\nagent\r\n"
    assert repo.status() == " M notes.txt\n"
    assert repo.git("diff", "--stat").strip().startswith("notes.txt | 1 +")


def _eol_rule(repo, tmp_path, where: str) -> None:
    """Make `sub/*.txt` check out with CRLF, from one of the places git reads such a rule."""
    rule = "*.txt text eol=crlf\n"
    if where == "nested .gitattributes":
        repo.write("sub/.gitattributes", rule)
        repo.commit("attributes")
    elif where == "info/attributes":
        repo.write(".git/info/attributes", rule)
    elif where == "core.attributesFile":
        (tmp_path / "attrs").write_text(rule)
        repo.git("config", "core.attributesFile", str(tmp_path / "attrs"))
    elif where == "global attributes":             # core.attributesFile's default
        path = os.path.join(os.environ["XDG_CONFIG_HOME"], "git", "attributes")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write(rule)
    elif where == "core.autocrlf":
        repo.git("config", "core.autocrlf", "true")
    elif where == "text=auto":
        repo.write(".gitattributes", "* text=auto eol=crlf\n")
        repo.commit("attributes")


def _lf_repo(tmp_path) -> Repo:
    path = tmp_path / "lf"
    path.mkdir()
    repo = Repo(path)
    repo.git("init", "-q", "-b", "main")
    repo.write("sub/notes.txt", "one\ntwo\n")
    repo.write("top.txt", "top\n")
    repo.commit("initial")
    return repo


@pytest.mark.parametrize("where", ["nested .gitattributes", "info/attributes", "core.attributesFile",
                                   "global attributes", "core.autocrlf", "text=auto", "the VM's commit"])
def test_pulled_commits_get_line_endings_from_every_source_of_eol_rules(tmp_path, where):
    """Wherever the rule lives, a pulled file is written as checkout writes it (the conversion
    step is skipped only when no rule can apply: this fails if that test is too broad)."""
    repo = _lf_repo(tmp_path)
    _eol_rule(repo, tmp_path, where)
    vm = repo.slicer_json("push", "--launch")["vm"]
    add = "printf '*.txt text eol=crlf\\n' > sub/.gitattributes && " if where == "the VM's commit" else ""
    repo.vm_sh(vm, add + "printf 'one\\nTWO\\n' > sub/notes.txt && git add -A && git commit -qm vm")
    repo.slicer("pull", vm)
    assert (repo.path / "sub/notes.txt").read_bytes() == b"one\r\nTWO\r\n"
    assert repo.status() == ""


def test_pull_skips_the_line_ending_step_when_no_rule_exists(tmp_path):
    """No attributes anywhere and no eol setting: no scratch checkout runs (three git processes
    fewer), and files arrive as committed. A host that stages the removal of a committed
    .gitattributes still converts (the commit the pull moves to has it)."""
    repo = _lf_repo(tmp_path)
    vm = repo.slicer_json("push", "--launch")["vm"]
    repo.vm_sh(vm, "printf 'one\\nTWO\\n' > sub/notes.txt && git commit -qam vm")
    trace = tmp_path / "trace"
    repo.slicer("pull", vm, env={**os.environ, "GIT_TRACE": str(trace)})
    assert (repo.path / "sub/notes.txt").read_bytes() == b"one\nTWO\n"
    assert "checkout-index" not in trace.read_text()
    # The rule is committed, but the host's index no longer has it: the pull still converts.
    repo.write("sub/.gitattributes", "*.txt text eol=crlf\n")
    repo.commit("attributes")
    repo.slicer("push", vm)
    repo.git("rm", "-q", "--cached", "sub/.gitattributes")
    repo.vm_sh(vm, "printf 'one\\nTHREE\\n' > sub/notes.txt && git commit -qam vm2")
    repo.slicer("pull", vm, env={**os.environ, "GIT_TRACE": str(trace)})
    assert (repo.path / "sub/notes.txt").read_bytes() == b"one\r\nTHREE\r\n"


LFS_CLEAN = """#!/bin/sh
# A stand-in for git-lfs: content becomes a pointer (a pointer passes through), content is kept
# in a store; every run is logged.
echo "clean $1" >> "{log}"
tmp=$(mktemp); cat > "$tmp"
if head -c 40 "$tmp" | grep -q '^version https://git-lfs'; then cat "$tmp"; else
  oid=$(sha256sum "$tmp" | cut -d' ' -f1); cp "$tmp" "{store}/$oid"
  printf 'version https://git-lfs.github.com/spec/v1\\noid sha256:%s\\nsize %s\\n' "$oid" "$(wc -c < "$tmp" | tr -d ' ')"
fi
rm -f "$tmp"
"""
LFS_SMUDGE = """#!/bin/sh
echo "smudge $1" >> "{log}"
tmp=$(mktemp); cat > "$tmp"
oid=$(sed -n 's/^oid sha256://p' "$tmp")
if [ -n "$oid" ] && [ -f "{store}/$oid" ]; then cat "{store}/$oid"; else cat "$tmp"; fi
rm -f "$tmp"
"""


def lfs_repo(tmp_path) -> tuple:
    """A repository whose *.bin files go through an LFS-like filter defined in the host's config."""
    store, log = tmp_path / "lfs-store", tmp_path / "lfs.log"
    store.mkdir()
    scripts = {}
    for name, text in (("clean", LFS_CLEAN), ("smudge", LFS_SMUDGE)):
        scripts[name] = tmp_path / ("lfs-" + name)
        scripts[name].write_text(text.format(log=log, store=store))
        scripts[name].chmod(0o755)
    path = tmp_path / "lfs"
    path.mkdir()
    repo = Repo(path)
    repo.git("init", "-q", "-b", "main")
    repo.git("config", "filter.lfs.clean", "%s %%f" % scripts["clean"])
    repo.git("config", "filter.lfs.smudge", "%s %%f" % scripts["smudge"])
    repo.git("config", "filter.lfs.required", "true")
    repo.write(".gitattributes", "*.bin filter=lfs -text\n")
    repo.write("model.bin", b"\x00weights\x01" * 100)
    repo.write("code.py", "x = 1\n")
    repo.commit("initial")
    assert repo.git("cat-file", "-p", "HEAD:model.bin").startswith("version https://git-lfs")
    return repo, log


def test_lfs_pointers_pull_without_running_a_driver(tmp_path):
    repo, log = lfs_repo(tmp_path)
    vm = repo.slicer_json("push", "--launch")["vm"]
    # The VM has no LFS: it sees the pointer file; the agent edits it and the code.
    pointer = repo.vm_sh(vm, "cat model.bin")
    assert pointer.startswith("version https://git-lfs")
    new_pointer = pointer.replace("size", "x-agent 1\nsize")
    repo.vm_sh(vm, "printf '%%s' '%s' > model.bin && echo 'x = 2' > code.py && git commit -qam 'vm: new pointer' && "
               "echo 'y = 3' >> code.py" % new_pointer)
    log.write_text("")
    result = repo.slicer_json("pull", vm)
    # Nothing is written through the driver. (`git status`, which the pull runs as the user's
    # would, may run the host's own clean filter on the host's own model.bin.)
    assert "smudge" not in log.read_text() and set(log.read_text().split()) <= {"clean", "model.bin"}
    assert result["fast_forward"] is True
    assert (repo.path / "model.bin").read_text() == new_pointer   # arrives as a pointer file
    assert (repo.path / "code.py").read_text() == "x = 2\ny = 3\n"
    assert repo.status() == " M code.py\n"                     # git (with the driver) agrees: clean


def test_vm_added_attribute_cannot_make_the_host_run_its_driver(tmp_path):
    """The host defines an LFS-like driver; the VM names it for files the host never had it on."""
    repo, log = lfs_repo(tmp_path)
    vm = repo.slicer_json("push", "--launch")["vm"]
    repo.vm_sh(vm, "printf '*.bin filter=lfs -text\\n*.py filter=lfs eol=crlf\\n' > .gitattributes && "
                   "echo 'x = 5' > code.py && echo data > new.py && git add -A && git commit -qm 'vm: attrs' && "
                   "echo 'z = 1' > wip.py")
    log.write_text("")
    repo.slicer("pull", vm)
    assert ".py" not in log.read_text() and "smudge" not in log.read_text()
    assert (repo.path / "code.py").read_bytes() == b"x = 5\r\n"      # the eol attribute applies
    assert (repo.path / "wip.py").read_text() == "z = 1\n"


def test_sparse_checkout_paths_outside_the_cone_are_not_written(repo):
    repo.write("docs/guide.md", "guide\n")
    repo.write("docs/deep/x.md", "x\n")
    repo.commit("docs")
    repo.git("sparse-checkout", "set", "src")
    assert not (repo.path / "docs").exists()
    vm = repo.slicer_json("push", "--launch")["vm"]
    assert repo.vm_sh(vm, "cat docs/guide.md") == "guide\n"            # the VM has everything
    repo.vm_sh(vm, "echo more >> docs/guide.md && mkdir -p docs/new && echo n > docs/new/n.md && "
                   "echo top > top.txt && echo 'VALUE = 2' > src/lib.py && git add -A && git commit -qm 'vm: all over'")
    result = repo.slicer_json("pull", vm)
    assert result["conflicts"] == [] and result["fast_forward"] is True
    assert not (repo.path / "docs").exists()
    assert (repo.path / "src" / "lib.py").read_text() == "VALUE = 2\n"
    assert (repo.path / "top.txt").read_text() == "top\n"
    assert repo.status() == ""
    tags = dict(line.split(" ", 1)[::-1] for line in repo.git("ls-files", "-t").splitlines())
    assert tags["docs/guide.md"] == tags["docs/new/n.md"] == "S" and tags["src/lib.py"] == "H"
    assert repo.git("show", "HEAD:docs/guide.md") == "guide\nmore\n"


def test_file_and_directory_swap_places_in_a_vm_commit(repo):
    repo.write("tool", "a file\n")
    repo.write("pkg/mod.py", "m\n")
    repo.write("pkg/sub/deep.py", "d\n")
    repo.commit("shapes")
    vm = repo.launched_vm = repo.slicer_json("push", "--launch")["vm"]
    repo.vm_sh(vm, "git rm -q tool && mkdir -p tool && echo main > tool/main.py && "
                   "git rm -rq pkg && echo 'now a file' > pkg && git add -A && git commit -qm 'vm: swap'")
    repo.slicer("pull", vm)
    assert (repo.path / "tool" / "main.py").read_text() == "main\n"
    assert (repo.path / "pkg").read_text() == "now a file\n"
    assert repo.status() == ""
    # And back again, with an uncommitted swap on top.
    repo.vm_sh(vm, "git rm -rq tool && echo back > tool && git rm -q pkg && mkdir pkg && echo again > pkg/mod.py && "
                   "git add -A && git commit -qm 'vm: swap back' && rm pkg/mod.py && rmdir pkg && echo wip > pkg")
    repo.slicer("pull", vm)
    assert (repo.path / "tool").read_text() == "back\n"
    assert (repo.path / "pkg").read_text() == "wip\n"
    assert repo.status() == repo.vm_status(vm)


def test_directory_holding_host_files_is_not_replaced(repo):
    repo.write("pkg/mod.py", "m\n")
    repo.commit("pkg")
    vm = repo.slicer_json("push", "--launch")["vm"]
    repo.vm_sh(vm, "git rm -rq pkg && echo file > pkg && git add -A && git commit -qm 'vm: pkg is a file'")
    repo.write("pkg/mine.txt", "host work\n")
    before = repo.fingerprint(skip=(".git/refs/slicer", ".git/logs/refs/slicer", ".git/objects"))
    proc = repo.slicer("pull", vm, check=False)
    assert proc.returncode == 1 and b"pkg/mine.txt" in proc.stderr, proc.stderr
    assert repo.fingerprint(skip=(".git/refs/slicer", ".git/logs/refs/slicer", ".git/objects")) == before


def sha256_repo(tmp_path, name="sha256") -> Repo:
    path = tmp_path / name
    path.mkdir()
    repo = Repo(path)
    repo.git("init", "-q", "-b", "main", "--object-format=sha256")
    repo.write("README.md", "# sha256\n")
    repo.write("src/app.py", "print(1)\n")
    repo.commit("initial")
    return repo


def test_sha256_repository_pushes_and_pulls_end_to_end(tmp_path):
    repo = sha256_repo(tmp_path)
    repo.write("wip.txt", "host wip\n")
    vm = repo.slicer_json("push", "--launch")["vm"]
    assert repo.vm_git(vm, "rev-parse", "--show-object-format").strip() == "sha256"
    assert repo.vm_git(vm, "rev-parse", "HEAD") == repo.git("rev-parse", "HEAD")
    assert repo.vm_status(vm) == repo.status()
    repo.vm_sh(vm, "echo 'print(2)' > src/app.py && mkdir lib && echo x > lib/x.py && git add -A && "
                   "git commit -qm 'vm: work' && echo more >> README.md && echo new > new.txt")
    status = repo.slicer_json("status", vm)
    assert "src/app.py" in status["vm_side"]["changed_since_sync"]
    assert "+more" in repo.slicer("diff", vm).stdout.decode()
    result = repo.slicer_json("pull", vm)
    assert result["fast_forward"] is True and len(result["to"]) == 64
    assert (repo.path / "lib" / "x.py").read_text() == "x\n"
    assert repo.status() == repo.vm_status(vm)
    repo.commit("host: take it all")
    assert repo.slicer_json("push", vm)["up_to_date"] is False
    assert repo.vm_git(vm, "rev-parse", "HEAD") == repo.git("rev-parse", "HEAD")


def test_vm_repository_with_another_object_format_is_refused(tmp_path, repo):
    vm = repo.slicer_json("push", "--launch")["vm"]
    guest = repo.slicer_json("status", vm)["guest_path"]
    other = sha256_repo(tmp_path)
    other.git("config", "slicer.%s.guestPath" % vm, guest)
    proc = other.slicer("push", vm, "--force", check=False)
    assert proc.returncode == 1 and b"sha1" in proc.stderr and b"sha256" in proc.stderr, proc.stderr
    assert b"Traceback" not in proc.stderr and b"internal error" not in proc.stderr
    assert repo.vm_git(vm, "rev-parse", "HEAD") == repo.git("rev-parse", "HEAD")


ODD_TRACKED = [b"tab\there", b"back\\slash", b"-dash", b"latin\xe9", b"new\nline", b"dir\twith/inner"]
ODD_UNTRACKED = [b"u\ttab", b"unt\xff", b"-untracked", b"nl\nuntracked"]


def status_z(repo_path, vm=None, repo=None) -> bytes:
    if vm is None:
        return subprocess.run(["git", "status", "--porcelain", "-z", "--untracked-files=all"], cwd=repo_path,
                              stdout=subprocess.PIPE, check=True).stdout
    return repo.slicer("exec", vm, "--", "git", "status", "--porcelain", "-z", "--untracked-files=all").stdout


def test_any_path_git_tracks_travels_both_ways(repo):
    root = os.fsencode(str(repo.path))
    for name in ODD_TRACKED:
        os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
        with open(os.path.join(root, name), "wb") as fh:
            fh.write(b"tracked " + name + b"\n")
    repo.commit("odd names")
    for name in ODD_UNTRACKED:
        with open(os.path.join(root, name), "wb") as fh:
            fh.write(b"untracked\n")
    with open(os.path.join(root, b"tab\there"), "ab") as fh:
        fh.write(b"host edit\n")
    vm = repo.slicer_json("push", "--launch")["vm"]
    assert status_z(repo.path, vm, repo) == status_z(repo.path)
    # The VM edits, commits and renames among those names; all of it comes home.
    repo.vm_sh(vm, "printf 'vm\\n' >> \"$(printf 'u\\ttab')\" && printf 'vm\\n' >> \"$(printf 'latin\\351')\" && "
                   "git commit -qm 'vm: latin' -- \"$(printf 'latin\\351')\" && git mv -- -dash --renamed && "
                   "git commit -qm 'vm: rename' && printf 'vm\\n' >> \"$(printf 'new\\nline')\"")
    result = repo.slicer_json("pull", vm)
    assert result["fast_forward"] is True
    with open(os.path.join(root, b"latin\xe9"), "rb") as fh:
        assert fh.read() == b"tracked latin\xe9\nvm\n"
    with open(os.path.join(root, b"u\ttab"), "rb") as fh:
        assert fh.read() == b"untracked\nvm\n"
    assert os.path.exists(os.path.join(root, b"--renamed")) and not os.path.exists(os.path.join(root, b"-dash"))
    assert status_z(repo.path) == status_z(repo.path, vm, repo)


def test_vm_cannot_bring_home_a_new_name_with_control_characters(launched):
    repo, vm = launched
    repo.vm_sh(vm, "printf 'x' > \"$(printf 'evil\\033]0;title\\007\\nname')\"")
    before = repo.fingerprint(skip=(".git/refs/slicer", ".git/logs/refs/slicer"))
    proc = repo.slicer("pull", vm, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "control characters: evil\\x1b]0;title\\x07\\x0aname" in err, err
    assert "\x1b" not in err and "internal error" not in err
    assert repo.fingerprint(skip=(".git/refs/slicer", ".git/logs/refs/slicer")) == before
    repo.vm_sh(vm, "rm evil* && printf 'x' > \"$(printf 'c\\tname')\" && git add -A && git commit -qm 'vm: tab name'")
    proc = repo.slicer("pull", vm, check=False)
    assert proc.returncode == 1 and "unsafe path" in proc.stderr.decode() and "c\\x09name" in proc.stderr.decode()
    assert repo.git("rev-parse", "HEAD") != repo.vm_git(vm, "rev-parse", "HEAD")


def test_submodules_travel_recursively_and_their_commits_come_home(tmp_path):
    new_repo(tmp_path / "nested", {"n.txt": "n\n"})
    lib = new_repo(tmp_path / "lib", {"l.txt": "l\n"})
    lib.add_submodule("../nested", "nested")
    app = new_repo(tmp_path / "app", {"a.txt": "a\n"})
    app.add_submodule("../lib", "lib")
    app.git("-c", "protocol.file.allow=always", "submodule", "update", "-q", "--init", "--recursive")
    assert app.git("-C", "lib/nested", "symbolic-ref", "-q", "HEAD", check=False) == ""     # detached
    app.write("lib/l.txt", "l\nhost wip\n")
    vm = app.slicer_json("push", "--launch")["vm"]
    # The VM has every submodule's contents at its commit, and the same status.
    assert app.vm_sh(vm, "cat lib/l.txt lib/nested/n.txt") == "l\nhost wip\nn\n"
    assert app.vm_git(vm, "-C", "lib/nested", "rev-parse", "HEAD") == app.git("-C", "lib/nested", "rev-parse", "HEAD")
    assert app.vm_status(vm) == app.status()
    # The agent commits inside both submodules and records them in the parent.
    app.vm_sh(vm, "cd lib/nested && echo vm >> n.txt && git commit -qam 'vm: nested' && cd .. && "
                  "git add nested l.txt && git commit -qm 'vm: lib' && cd .. && git add lib && "
                  "git commit -qm 'vm: bump lib' && echo wip > lib/nested/wip.txt")
    result = app.slicer_json("pull", vm)
    assert result["fast_forward"] is True
    for path in ("lib", "lib/nested"):
        vm_head = app.vm_git(vm, "-C", path, "rev-parse", "HEAD").strip()
        assert app.git("-C", path, "rev-parse", "HEAD").strip() == vm_head
        refs = app.git("-C", path, "for-each-ref", "--format=%(objectname)", "refs/slicer/%s/" % vm).split()
        assert vm_head in refs
    assert (app.path / "lib" / "nested" / "n.txt").read_text() == "n\nvm\n"
    assert (app.path / "lib" / "nested" / "wip.txt").read_text() == "wip\n"
    assert app.status() == app.vm_status(vm)
    assert app.git("-C", "lib", "status", "--porcelain") == app.vm_git(vm, "-C", "lib", "status", "--porcelain")


def test_a_pull_refused_in_a_submodule_says_the_superproject_was_already_pulled(tmp_path):
    """The superproject's pull runs before its submodules': when a submodule's pull is then
    refused, the error says what the superproject's pull already wrote (its own "nothing was
    written" is the submodule's), and pulling again once that is resolved brings the rest."""
    new_repo(tmp_path / "lib", {"l.txt": "l\n"})
    app = new_repo(tmp_path / "app", {"a.txt": "a\n"})
    old = app.add_submodule("../lib", "lib")
    vm = app.slicer_json("push", "--launch")["vm"]
    app.vm_sh(vm, "cd lib && echo vm >> l.txt && git commit -qam 'vm: lib' && cd .. && "
                  "echo vm >> a.txt && git commit -qam 'vm: bump lib'")
    new = app.vm_git(vm, "rev-parse", "HEAD").strip()
    app.write("lib/l.txt", "l\nhost wip\n")
    proc = app.slicer("pull", vm, "--json", check=False)
    assert proc.returncode == 1
    error = json.loads(proc.stdout)["error"]
    assert error["kind"] == "WouldLoseWork" and error["message"].startswith("submodule lib: ")
    assert "the superproject's pull had already run: main fast-forwarded %s..%s" % (old[:12], new[:12]) \
        in error["message"]
    assert error["details"]["pulled_before"]["to"] == new and error["details"]["conflicts"] == ["l.txt"]
    assert app.git("rev-parse", "HEAD").strip() == new
    assert (app.path / "lib" / "l.txt").read_text() == "l\nhost wip\n"        # the host's edit stays
    # Resolved (the host's edit stashed), the same command brings the submodule's commit.
    app.git("-C", "lib", "stash", "-q")
    app.slicer_json("pull", vm)
    assert app.git("-C", "lib", "rev-parse", "HEAD") == app.vm_git(vm, "-C", "lib", "rev-parse", "HEAD")
    assert app.status() == ""
    # A refusal with nothing pulled before it says nothing more.
    app.vm_sh(vm, "cd lib && echo vm2 >> l.txt && git commit -qam 'vm: lib 2'")
    app.write("lib/l.txt", "l\nvm\nhost wip 2\n")
    proc = app.slicer("pull", vm, "--json", check=False)
    assert proc.returncode == 1 and "superproject" not in json.loads(proc.stdout)["error"]["message"]
