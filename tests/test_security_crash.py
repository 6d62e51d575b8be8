"""Kill the host command or the agent at every named phase of push and pull
(GIT_SLICER_TEST_CRASH_AT=<phase> makes that process os._exit at once, no cleanup), and with
`kill -9` at spread-out moments of a large push. Afterwards: no stale .lock files; the host
branch, index and worktree are entirely old or entirely new (a pull killed while writing leaves
a journal, and the next command rolls it back before anything else); a push killed in the VM is
finished by the agent before it answers anything (its journal), so a pull then writes nothing
on the host; and the next push completes with the VM's status equal to the host's.
"""

import os
import re

import pytest

from hostile_agent import install, uninstall, vm_home

PULL_HOST = ["pull:recovered", "pull:pack-received", "pull:validated", "pull:migrating", "pull:objects-in",
             "pull:staged", "pull:ref-moved", "pull:writing", "pull:files-written", "pull:index-written",
             "pull:imported"]
PULL_AGENT = ["agent:fetch", "agent:files"]
PUSH_HOST = ["push:pack-sent", "push:files-sent", "push:before-link"]
PUSH_AGENT = ["agent:push-received", "agent:push-journaled", "agent:push-applying", "agent:push-placing",
              "agent:push-applied", "agent:push-recorded", "agent:scan-index-locked"]


def locks(repo):
    return [os.path.join(root, n) for root, _, files in os.walk(repo.path / ".git") for n in files
            if n.endswith(".lock")]


def snap(repo):
    """What the user sees: branch tip, index, worktree bytes."""
    return (repo.git("rev-parse", "refs/heads/main").strip(), repo.git("ls-files", "-s"),
            repo.fingerprint(skip=(".git/",)))


def crash_env(phase):
    return {**os.environ, "GIT_SLICER_TEST_CRASH_AT": phase}


def journal(repo):
    return (repo.path / ".git" / "slicer" / "pull-journal.json").exists()


@pytest.mark.parametrize("phase", PULL_HOST + PULL_AGENT)
def test_pull_killed_at_every_phase(launched, phase):
    repo, vm = launched
    repo.vm_sh(vm, "echo more >> README.md && git rm -q src/lib.py && echo n > new.txt && git add -A && "
                   "git commit -qm vm && echo wip >> src/app.py && echo u > untracked.txt && ln -s README.md l2")
    old = snap(repo)
    if phase.startswith("agent:"):
        install(repo, vm, None, env={"GIT_SLICER_TEST_CRASH_AT": phase})
        proc = repo.slicer("pull", vm, check=False)
        uninstall(repo)
    else:
        proc = repo.slicer("pull", vm, check=False, env=crash_env(phase))
    assert proc.returncode != 0, "the pull did not reach phase %s" % phase
    assert locks(repo) == []
    crashed, left_journal = snap(repo), journal(repo)
    # The next command first recovers; stop it right there to see what recovery left.
    proc = repo.slicer("pull", vm, check=False, env=crash_env("pull:recovered"))
    assert proc.returncode == 99
    recovered = snap(repo)
    assert not journal(repo) and locks(repo) == []
    repo.slicer("pull", vm)
    new = snap(repo)
    assert new != old
    assert repo.git("rev-parse", "HEAD") == repo.vm_git(vm, "rev-parse", "HEAD")
    assert (repo.path / "src" / "app.py").read_text().endswith("wip\n")
    assert (repo.path / "untracked.txt").read_text() == "u\n" and os.readlink(repo.path / "l2") == "README.md"
    assert recovered in (old, new)
    assert crashed in (old, new) or left_journal, "killed at %s: a mixed state with no journal" % phase
    assert not [n for n in os.listdir(repo.path) if n.startswith(".slicer-")]
    assert not [n for n in os.listdir(repo.path / ".git") if n.startswith("slicer-pull-")]
    assert not [n for n in os.listdir(repo.path / ".git" / "objects") if n.startswith("incoming-")]


def host_view(repo):
    """What a pull could change on the host: HEAD, branch tip, index entries, worktree bytes."""
    return (repo.git("rev-parse", "HEAD").strip(), repo.git("symbolic-ref", "HEAD").strip(),
            repo.git("ls-files", "-s"), repo.fingerprint(skip=(".git/",)))


def vm_leftovers(repo, vm):
    """Lock files and transaction directories in the VM repository's .git."""
    out = repo.vm_sh(vm, "cd .git && find . -name '*.lock' -o -name 'slicer-push' | sort")
    return out.split()


def assert_recovers(repo, vm, kept_ok=False):
    """A pull writes nothing; the next push completes with the VM equal to the host; then a
    pull still writes nothing; nothing is left over in the VM, and recovery kept nothing as the
    VM's own change (`kept_ok`: a file git was writing when the whole VM died may be kept:
    half written, it is neither the old state nor the new)."""
    before = host_view(repo)
    repo.slicer("pull", vm)
    assert host_view(repo) == before, "a pull after the interrupted push changed the host"
    repo.slicer("push", vm)
    assert repo.vm_git(vm, "rev-parse", "HEAD") == repo.git("rev-parse", "HEAD")
    assert repo.vm_status(vm) == repo.status()
    repo.slicer("pull", vm)
    assert host_view(repo) == before
    assert vm_leftovers(repo, vm) == []
    assert kept_ok or repo.vm_git(vm, "for-each-ref", "refs/slicer/kept/") == "", "recovery kept the push's own writes"


@pytest.mark.parametrize("phase", ["push:pending-saved"] + PUSH_HOST + PUSH_AGENT)
def test_push_killed_at_every_phase(launched, phase):
    repo, vm = launched
    repo.write("src/app.py", "print('wip')\n")       # an uncommitted edit the VM already has
    repo.write("src/lib.py", "VALUE = 'dirty'\n")     # and one the host then takes back
    repo.slicer("push", vm)
    repo.git("checkout", "--", "src/lib.py")
    repo.write("README.md", "changed\n")
    repo.git("commit", "-qm", "host", "README.md")
    repo.write("notes.txt", "untracked\n")
    repo.write("bin/run", "#!/bin/sh\necho edited\n")
    (repo.path / "assets.bin").write_bytes(bytes(range(256)) * (5 * 4096))   # its id follows the stream
    before = repo.fingerprint(skip=(".git/",))
    if phase == "agent:scan-index-locked":
        # The scan installs its index only when git refreshed stat data in it: without a file
        # with stale stat data, whether it does depends on which second the last push ended in.
        os.utime(next(vm_home(vm).glob("*/src/lib.py")), (1_600_000_000, 1_600_000_000))
    if phase.startswith("agent:"):
        install(repo, vm, None, env={"GIT_SLICER_TEST_CRASH_AT": phase})
        proc = repo.slicer("push", vm, check=False)
        uninstall(repo)
    else:
        proc = repo.slicer("push", vm, check=False, env=crash_env(phase))
    assert proc.returncode != 0, "the push did not reach phase %s" % phase
    assert locks(repo) == []
    assert repo.fingerprint(skip=(".git/",)) == before
    repo.write("src/lib.py", "VALUE = 2\n")          # the host moves on before the next command
    assert_recovers(repo, vm)
    assert (repo.path / "src" / "app.py").read_text() == "print('wip')\n"
    assert (repo.path / "src" / "lib.py").read_text() == "VALUE = 2\n"
    assert repo.vm_git(vm, "hash-object", "assets.bin") == repo.git("hash-object", "assets.bin")


def crash_the_agent_of_a_vm_to_launch(repo, tmp_path, phase):
    """The next launched VM's agent dies at `phase`. `install` needs the VM's disk, which a VM
    to be launched does not have yet: an unsandboxed local VM runs its agent through this host
    wrapper instead (the real agent, with GIT_SLICER_TEST_CRASH_AT set)."""
    import sys
    wrapper = tmp_path / "crashing-python"
    wrapper.write_text("#!/bin/sh\nexport GIT_SLICER_TEST_CRASH_AT='%s'\nexec '%s' \"$@\"\n"
                       % (phase, os.path.realpath(sys.executable)))
    wrapper.chmod(0o755)
    repo.git("config", "slicer.local.sandbox", "none")
    repo.git("config", "slicer.local.python", str(wrapper))


def names(rows, key):
    return sorted(r[key] for r in rows if r[key])


@pytest.mark.parametrize("how", ["launch", "new-vm"])
@pytest.mark.parametrize("phase", PUSH_HOST + PUSH_AGENT)
def test_first_push_killed_at_every_phase(repo, tmp_path, how, phase):
    """A FIRST push (`push --launch`, or `push VM` to a freshly launched VM) killed at every
    phase, the host command or the agent. Its link was saved, pending, before the VM saw
    anything: the next plain `push` completes without --force, a pull writes nothing on the host,
    and the VM's status equals the host's. A `push --launch` that fails keeps its VM and link
    once the VM may hold the push; only a push that cannot have reached it removes both."""
    repo.write("src/app.py", "print('wip')\n")         # dirty and untracked files travel too
    repo.write("notes.txt", "untracked\n")
    args = ("push", "--launch")
    if how == "new-vm":
        args = ("push", repo.slicer_json("vm", "launch")["name"])
    before = repo.fingerprint(skip=(".git/",))
    if phase.startswith("agent:"):
        if how == "launch":
            crash_the_agent_of_a_vm_to_launch(repo, tmp_path, phase)
        else:
            install(repo, args[1], None, env={"GIT_SLICER_TEST_CRASH_AT": phase})
        proc = repo.slicer(*args, check=False)
        uninstall(repo)
    else:
        proc = repo.slicer(*args, check=False, env=crash_env(phase))
    assert proc.returncode != 0, "the push did not reach phase %s" % phase
    assert b"Traceback" not in proc.stderr
    assert locks(repo) == []
    assert repo.fingerprint(skip=(".git/",)) == before
    links, vms = names(repo.slicer_json("list"), "vm"), names(repo.slicer_json("vm", "list"), "name")
    if not links:
        # Only an agent that died before it had the whole push may leave no link (the host then
        # knows nothing of it reached the VM): a launched VM is removed again, nothing is left.
        assert phase == "agent:push-received", "killed at %s: the first push left no link" % phase
        if how == "launch":
            assert vms == [] and b"removed new VM" in proc.stderr
            return
        repo.slicer(*args)
        links = names(repo.slicer_json("list"), "vm")
    assert links == vms and len(vms) == 1
    vm = vms[0]
    repo.write("src/lib.py", "VALUE = 2\n")              # the host moves on before the next command
    view = host_view(repo)
    proc = repo.slicer("pull", check=False)             # nothing to bring, or: the push never got there
    assert proc.returncode == 0 or b"its first push did not complete" in proc.stderr, proc.stderr
    assert host_view(repo) == view, "a pull after the interrupted first push changed the host"
    repo.slicer("push")                                 # plain: no VM named, no --force
    assert repo.vm_git(vm, "rev-parse", "HEAD") == repo.git("rev-parse", "HEAD")
    assert repo.vm_status(vm) == repo.status()
    repo.slicer("pull")
    assert host_view(repo) == view
    assert vm_leftovers(repo, vm) == []


def test_status_saves_the_settlement_of_a_lost_push_under_the_links_lock(launched):
    """A push killed after the VM applied it (its reply lost) is settled by `status` too, and
    saved in the link when status can take the link's lock; while a push or pull holds that lock
    it only reports. Status writes nothing but the link: never the worktree, index or refs."""
    import fcntl
    import json
    repo, vm = launched
    repo.write("README.md", "changed\n")
    repo.git("commit", "-qm", "host", "README.md")
    repo.write("notes.txt", "untracked\n")
    assert repo.slicer("push", vm, check=False, env=crash_env("push:before-link")).returncode == 99
    link_file = repo.path / ".git" / "slicer" / "links" / ("%s.json" % vm)
    pending = json.loads(link_file.read_text())["pending"]
    assert pending and pending["commit"] == repo.git("rev-parse", "HEAD").strip()
    refs, view = repo.git("for-each-ref"), host_view(repo)
    with open(repo.path / ".git" / "slicer" / "vms" / ("%s.flock" % vm), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)              # as a running push or pull holds it
        busy = repo.slicer_json("status", vm)
    assert busy["in_sync"] and busy["agreed_commit"] == pending["commit"]
    assert json.loads(link_file.read_text())["pending"] == pending
    assert repo.slicer_json("status", vm) == busy
    saved = json.loads(link_file.read_text())
    assert saved["pending"] is None and saved["agreed_commit"] == pending["commit"]
    assert "notes.txt" in saved["agreed_overlay"]["files"]
    assert repo.git("for-each-ref") == refs and host_view(repo) == view
    repo.slicer("push", vm)                           # and the link is a good base for the next push
    assert repo.vm_status(vm) == repo.status()


def test_a_push_that_cannot_be_finished_stops_every_request_with_one_line_and_exec_still_runs(launched):
    """Recovery only rolls forward: a push journaled in the VM whose steps keep failing (here a
    directory it must write is read-only, as a full disk would refuse) stops every request. Each
    says why in one line and how out; the agent's exec (the way in) still runs; once the VM has
    what the push needs, the next command finishes it."""
    import io
    from git_slicer.config import Settings
    from git_slicer.providers.registry import get_provider
    from git_slicer.session import open_session
    repo, vm = launched
    repo.write("src/lib.py", "VALUE = 2\n")
    repo.git("commit", "-qm", "host", "src/lib.py")
    install(repo, vm, None, env={"GIT_SLICER_TEST_CRASH_AT": "agent:push-journaled"})
    assert repo.slicer("push", vm, check=False).returncode != 0
    uninstall(repo)
    repo.vm_sh(vm, "chmod a-w src")
    for args in (("status", vm), ("pull", vm), ("push", vm)):
        proc = repo.slicer(*args, check=False)
        lines = proc.stderr.decode().splitlines()
        assert proc.returncode == 1, args
        assert lines[0].startswith("error: VM %s: a push into " % vm) and "could not be finished" in lines[0], lines
        assert "Permission denied" in lines[0], lines
        assert lines[1:] == ["hint: make room in the VM (`git slicer shell %s`), then run the command again" % vm]
    settings = Settings(str(repo.path))
    provider = get_provider("local", settings)
    out, err = io.BytesIO(), io.BytesIO()
    with open_session(provider, provider.get(vm), settings) as session:
        assert session.exec(["sh", "-c", "chmod u+w src && echo fixed"], repo.path.name, out, err) == 0
    assert out.getvalue() == b"fixed\n" and b"could not be finished" in err.getvalue()
    repo.slicer("push", vm)
    assert repo.vm_git(vm, "rev-parse", "HEAD") == repo.git("rev-parse", "HEAD")
    assert repo.vm_status(vm) == repo.status()
    assert vm_leftovers(repo, vm) == []


def target_of(text: str) -> str:
    """The last path a traced call names (rename's and link's new name, open's file)."""
    import re
    names = re.findall(r'"((?:[^"\\]|\\.)*)"', text)
    return names[-1] if names else ""


def parse_trace(text: str) -> list:
    """strace -f lines as (call, text), in order; unfinished/resumed halves joined."""
    import re
    events, pending = [], {}
    for line in text.splitlines():
        match = re.match(r"^(\d+)\s+(.*)$", line)
        if not match:
            continue
        pid, rest = match.groups()
        if rest.endswith("<unfinished ...>"):
            pending[pid] = rest[:-len("<unfinished ...>")]
            continue
        resumed = re.match(r"^<\.\.\. (\w+) resumed>(.*)$", rest)
        if resumed:
            rest = pending.pop(pid, resumed.group(1) + "(") + resumed.group(2)
        call = re.match(r"^(\w+)\(", rest)
        if call:
            events.append((call.group(1), rest))
    return events


def test_a_push_is_on_disk_before_its_journal_names_it_and_before_it_is_recorded(launched):
    """Traced with strace in the sandbox: the files a push received are flushed to disk (one
    syncfs) before the journal that names them is written, and everything the apply wrote (git's
    checkouts, the placed files, the index) before the journal says "applied", so a VM that
    loses power never finishes a push from damaged files nor records a state its disk lacks."""
    import shutil
    from hostile_agent import vm_home
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (scripts/install-system-deps.sh)")
    repo, vm = launched
    repo.write("src/lib.py", "VALUE = 3\n")
    repo.git("commit", "-qm", "host", "src/lib.py")     # git checks this one out
    for i in range(20):
        repo.write("many/f%02d.txt" % i, "untracked %d\n" % i)   # these arrive as files
    directory = vm_home(vm) / ".hostile"
    directory.mkdir(exist_ok=True)
    run = directory / "run"
    run.write_text("#!/bin/sh\nexec strace -f -qq -e trace=syncfs,sync,openat,rename,renameat,renameat2,linkat "
                   "-o /home/agent/.hostile/trace /usr/bin/python3 \"$@\"\n")
    run.chmod(0o755)
    repo.git("config", "slicer.local.python", "/home/agent/.hostile/run")
    proc = repo.slicer("push", vm, check=False)
    uninstall(repo)
    if proc.returncode != 0 and b"ptrace" in proc.stderr:
        pytest.skip("strace cannot trace inside the sandbox here")
    assert proc.returncode == 0, proc.stderr
    events = parse_trace((directory / "trace").read_text())
    journal = [i for i, (call, text) in enumerate(events)
               if call.startswith("rename") and target_of(text).endswith("slicer-push/journal.json")]
    syncs = [i for i, (call, _) in enumerate(events) if call in ("syncfs", "sync")]
    assert len(journal) == 2, "a journal written, then marked applied"
    received = [i for i, (call, text) in enumerate(events)
                if call == "openat" and "slicer-push/files/" in text and "O_CREAT" in text]
    assert received and max(received) < journal[0]
    assert any(max(received) < s < journal[0] for s in syncs), "the journal names files not on disk"
    applied = [i for i, (call, text) in enumerate(events) if journal[0] < i < journal[1] and (
        call == "linkat" and target_of(text).startswith("/home/agent/project/many/")
        or call == "openat" and "O_CREAT" in text and target_of(text) == "src/lib.py"
        or call.startswith("rename") and target_of(text).endswith("/.git/index"))]
    kinds = {events[i][0] for i in applied}
    assert "linkat" in kinds and "openat" in kinds and any(k.startswith("rename") for k in kinds), kinds
    assert any(max(applied) < s < journal[1] for s in syncs), "marked applied before its files were on disk"
    assert repo.vm_status(vm) == repo.status()


def test_pull_after_a_push_killed_while_applying_keeps_host_edits(launched):
    """The issue's reproduction: the agent dies between checking out the commit and putting the
    VM's kept files back; the refusal's hint was `pull`, which deleted the host's edit."""
    repo, vm = launched
    repo.write("src/app.py", "print('host edit')\n")
    repo.slicer("push", vm)
    repo.write("README.md", "committed\n")
    repo.git("commit", "-qm", "c", "README.md")
    install(repo, vm, None, env={"GIT_SLICER_TEST_CRASH_AT": "agent:push-applying"})
    assert repo.slicer("push", vm, check=False).returncode != 0
    uninstall(repo)
    repo.write("notes.txt", "more host work\n")
    before = host_view(repo)
    proc = repo.slicer("pull", vm, check=False)
    assert proc.returncode == 0, proc.stderr
    assert host_view(repo) == before
    assert (repo.path / "src" / "app.py").read_text() == "print('host edit')\n"
    # The VM finished the push before answering: it holds the host's edit, not a half state.
    assert repo.vm_sh(vm, "cat src/app.py") == "print('host edit')\n"
    repo.slicer("push", vm)
    assert repo.vm_status(vm) == repo.status()


@pytest.mark.parametrize("vm_had_changes", [False, True], ids=["clean-vm", "vm-with-changes"])
def test_vm_work_made_while_a_killed_push_waits_is_kept_before_the_push_is_finished(launched, vm_had_changes):
    """The agent dies in the middle of applying a push, and the VM goes on working (on its own
    disk: no request reaches the agent) in paths that push writes. The next request finishes
    the push, as always, but first saves the VM's changes in a ref that every command names
    until the VM deletes it. Into a VM with changes of its own, the checkout rewrites every
    tracked file (`read-tree --reset`), so an edit of any tracked file is kept; into a clean
    one, only the paths the push writes are, and every other edit stays as the VM left it."""
    repo, vm = launched
    if vm_had_changes:
        repo.write("src/app.py", "print('wip')\n")
    repo.slicer("push", vm)
    repo.write("README.md", "host commit\n")
    repo.git("commit", "-qm", "host", "README.md")
    repo.write("notes.txt", "host notes\n")
    repo.write("src/app.py", "print('host wip 2')\n")
    install(repo, vm, None, env={"GIT_SLICER_TEST_CRASH_AT": "agent:push-applying"})
    assert repo.slicer("push", vm, check=False).returncode != 0
    uninstall(repo)
    disk = next(vm_home(vm).glob("*/.git")).parent
    vm_work = {"README.md": "the VM's edit of what git checked out\n",      # written before the kill
               "notes.txt": "the VM's notes\n",                           # the push has yet to place it
               "src/app.py": "print('vm')\n"}                              # nor this one
    untouched = {"src/lib.py": "VALUE = 'vm'\n"}                           # a path the push does not change
    for path, text in {**vm_work, **untouched}.items():
        (disk / path).write_text(text)
    if vm_had_changes:
        vm_work.update(untouched)
    proc = repo.slicer("status", vm)
    found = re.findall(r"refs/slicer/kept/[\w-]+", proc.stderr.decode())
    assert found, proc.stderr
    ref = found[0]
    kept = repo.vm_git(vm, "ls-tree", "-r", "--name-only", ref).split()
    assert sorted(kept) == sorted(vm_work)
    for path, text in vm_work.items():
        assert repo.vm_git(vm, "show", "%s:%s" % (ref, path)) == text
    # The push was finished as it would have been uninterrupted.
    assert repo.vm_sh(vm, "cat README.md notes.txt src/app.py src/lib.py") == \
        "host commit\nhost notes\nprint('host wip 2')\n" + ("VALUE = 1\n" if vm_had_changes else "VALUE = 'vm'\n")
    assert repo.slicer_json("status", vm)["vm_side"]["kept"] == [{"ref": ref, "paths": sorted(vm_work)}]
    proc = repo.slicer("vm", "rm", vm, check=False)             # work only the VM holds
    assert proc.returncode == 1 and ref.encode() in proc.stderr, proc.stderr
    assert ref in repo.slicer("push", vm, check=False).stderr.decode()      # named until the VM deletes it
    repo.vm_git(vm, "update-ref", "-d", ref)
    assert "refs/slicer/kept" not in repo.slicer("status", vm).stderr.decode()
    assert not (disk / ".git" / "slicer-kept.json").exists()


@pytest.mark.parametrize("phase", ["agent:push-journaled", "agent:push-applying", "agent:push-placing"])
def test_seeded_vm_edits_after_a_killed_push_are_in_the_vm_or_kept_never_lost(repo, phase):
    """Rounds of host changes (commits, edits, new and removed files) pushed into a VM whose
    agent dies at `phase`; meanwhile the VM edits, creates and removes files of its own, some
    that the push writes, some it does not. After the next command finishes the push, each VM
    edit is still in the VM's file or in a kept ref with every byte, and a kept ref holds
    nothing else (no edit of the push's own)."""
    import random
    rng = random.Random(phase)
    names = ["f%02d.txt" % i for i in range(40)]
    for name in names:
        repo.write(name, "base %s\n" % name)
    repo.commit("forty files")
    vm = repo.slicer_json("push", "--launch")["vm"]
    disk = next(vm_home(vm).glob("*/.git")).parent
    for n in range(4):
        for name in rng.sample(names, 5):
            repo.write(name, "host commit %d %s\n" % (n, name))
        repo.git("add", "-A")
        repo.git("commit", "-qm", "round %d" % n)
        for name in rng.sample(names, 5):
            repo.write(name, "host dirty %d %s\n" % (n, name))
        repo.write("new%d.txt" % n, "host untracked %d\n" % n)
        install(repo, vm, None, env={"GIT_SLICER_TEST_CRASH_AT": phase})
        assert repo.slicer("push", vm, check=False).returncode != 0
        uninstall(repo)
        edits = {}
        for name in rng.sample(names + ["new%d.txt" % n, "vm%d.txt" % n], 8):
            edits[name] = "vm edit %d %s %d\n" % (n, name, rng.random() * 1e9)
            (disk / name).write_text(edits[name])
        proc = repo.slicer("status", vm, check=False)
        assert proc.returncode in (0, 1), proc.stderr
        refs = repo.vm_git(vm, "for-each-ref", "--format=%(refname)", "refs/slicer/kept/").split()
        kept = {}
        for ref in refs:
            for path in repo.vm_git(vm, "ls-tree", "-r", "--name-only", ref).split():
                kept[path] = repo.vm_git(vm, "show", "%s:%s" % (ref, path))
            repo.vm_git(vm, "update-ref", "-d", ref)
        for name, text in edits.items():
            now = (disk / name).read_text() if (disk / name).exists() else None
            assert now == text or kept.get(name) == text, "round %d: the VM's edit of %s is lost" % (n, name)
            if now == text:
                assert name not in kept, "round %d: %s kept, though still in the VM" % (n, name)
        assert set(kept) <= set(edits), "round %d: kept what the VM did not edit: %s" % (n, set(kept) - set(edits))
        # The VM's surviving edits are its own changes now: pull them home, then both agree again.
        repo.slicer("pull", vm, "--force")
        repo.slicer("push", vm)
        assert repo.vm_status(vm) == repo.status()


@pytest.mark.parametrize("phase", ["agent:push-journaled", "agent:push-applying"])
def test_recovery_of_a_push_that_rewrites_every_file_keeps_none_of_the_vms_old_changes(launched, phase):
    """A push that changes an ignore file has no list of the paths it touches, and its checkout
    rewrites every tracked file. The VM's changes from before it (here one the host has since
    taken back) are not the VM's work since the kill: recovery keeps nothing."""
    repo, vm = launched
    repo.write("src/lib.py", "VALUE = 'dirty'\n")
    repo.write("src/app.py", "print('wip')\n")
    repo.slicer("push", vm)
    repo.git("checkout", "--", "src/lib.py")
    repo.write(".gitignore", "*.log\n")
    repo.write("README.md", "changed\n")
    install(repo, vm, None, env={"GIT_SLICER_TEST_CRASH_AT": phase})
    assert repo.slicer("push", vm, check=False).returncode != 0
    uninstall(repo)
    proc = repo.slicer("status", vm)
    assert "refs/slicer/kept" not in proc.stderr.decode()
    assert repo.vm_git(vm, "for-each-ref", "refs/slicer/kept/") == ""
    assert repo.vm_sh(vm, "cat src/lib.py src/app.py") == "VALUE = 1\nprint('wip')\n"


def test_vm_work_that_cannot_be_kept_is_not_overwritten(launched):
    """Saving the VM's changes fails (its object store is read-only, as a full disk would
    refuse): the push stays unfinished, every request says so in one line, and the VM's change
    is still in its file. Once the VM can write again, the next command keeps it and finishes."""
    repo, vm = launched
    repo.write("notes.txt", "host notes\n")
    install(repo, vm, None, env={"GIT_SLICER_TEST_CRASH_AT": "agent:push-applying"})
    assert repo.slicer("push", vm, check=False).returncode != 0
    uninstall(repo)
    disk = next(vm_home(vm).glob("*/.git")).parent
    (disk / "notes.txt").write_text("the VM's notes\n")
    objects = [disk / ".git" / "objects"] + [p for p in (disk / ".git" / "objects").iterdir() if p.is_dir()]
    for directory in objects:
        directory.chmod(0o555)
    try:
        proc = repo.slicer("status", vm, check=False)
        assert proc.returncode == 1 and "could not be finished" in proc.stderr.decode(), proc.stderr
        assert (disk / "notes.txt").read_text() == "the VM's notes\n"
    finally:
        for directory in objects:
            directory.chmod(0o755)
    proc = repo.slicer("status", vm)
    (ref,) = set(re.findall(r"refs/slicer/kept/[\w-]+", proc.stderr.decode()))
    assert repo.vm_git(vm, "show", ref + ":notes.txt") == "the VM's notes\n"
    assert (disk / "notes.txt").read_text() == "host notes\n"


# -- kill -9 at spread-out moments of a large push -------------------------------------------
SWEEP_FILES, SWEEP_DIRTY, SWEEP_POINTS = 3000, 300, 8


def _children() -> dict:
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry, "rb") as fh:
                    ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pid: int) -> list:
    children, todo, found = _children(), [pid], []
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            found.append(child)
    return found


def wait_gone(pids) -> None:
    """Wait until processes a killed command left running (its git children) have exited."""
    import time
    for pid in pids:
        while os.path.exists("/proc/%d" % pid) and not _zombie(pid):
            time.sleep(0.02)


def _zombie(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid, "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


def warm_agent(vm: str):
    """(sandbox pid, agent pid) of the VM's warm agent: the sandbox's first process (SIGKILL
    ends the whole sandbox, as a VM crash) and the python serving the protocol inside it."""
    import json
    info = json.loads((vm_home(vm).parent / "agent.json").read_text())
    children, todo = _children(), [info["pid"]]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            try:
                with open("/proc/%d/cmdline" % child, "rb") as fh:
                    argv = fh.read().split(b"\0")
            except OSError:
                continue
            if os.path.basename(argv[0]).startswith(b"python") and b"git_slicer.agent" in argv:
                return info["pid"], child
    return info["pid"], None


def sweep_round(repo, n: int) -> None:
    """A commit of many files, then hundreds of dirty tracked files, untracked files, deletions."""
    for i in range(n % 7, SWEEP_FILES, 97):
        repo.write("d%02d/f%04d.txt" % (i % 30, i), "committed in round %d\n" % n)
    repo.git("add", "-A")
    repo.git("commit", "-qm", "round %d" % n)
    for k in range(SWEEP_DIRTY):
        i = (k * 11 + n) % SWEEP_FILES
        repo.write("d%02d/f%04d.txt" % (i % 30, i), "dirty in round %d\n" % n)
    for k in range(20):
        repo.write("new%d/u%02d.txt" % (n, k), "untracked %d\n" % k)
    for i in range(n + 1, SWEEP_FILES, 600):
        path = repo.path / ("d%02d/f%04d.txt" % (i % 30, i))
        if path.exists():
            path.unlink()


def test_kill_9_at_spread_out_moments_of_a_large_push(repo):
    """`kill -9`, at moments spread over a push of 3,000 files with hundreds dirty, of the host
    command alone (the VM's warm agent lives on and sees the connection drop), of the agent alone
    (its git children live on), or of both and the whole sandbox (a crashed VM). After each: the
    host is byte-identical, a pull writes nothing, the next push completes with the VM's status
    equal to the host's, and nothing is left over in the VM."""
    import signal
    import subprocess
    import time
    from conftest import SLICER
    for i in range(SWEEP_FILES):
        repo.write("d%02d/f%04d.txt" % (i % 30, i), "line %d\n" % i * 20)
    repo.commit("many files")
    vm = repo.slicer_json("push", "--launch")["vm"]
    sweep_round(repo, 0)
    started = time.monotonic()
    repo.slicer("push", vm)                       # how long a round's push takes here (not asserted)
    took = time.monotonic() - started
    interrupted = 0
    for point in range(SWEEP_POINTS):
        sweep_round(repo, point + 1)
        before = host_view(repo)
        proc = subprocess.Popen(SLICER + ["push", vm], cwd=repo.path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        time.sleep(took * (point + 0.5) / SWEEP_POINTS)
        sandbox, agent = warm_agent(vm)
        kind = ("cli", "agent", "vm")[point % 3]
        victims = {"cli": [proc.pid], "agent": [agent], "vm": [sandbox, proc.pid]}[kind]
        # What lives on after the kill and must end first: the command's git children, and the
        # dead agent's (a running agent serializes the next request itself, by its lock).
        left = descendants(proc.pid) + {"cli": [], "agent": descendants(agent or 0), "vm": descendants(sandbox)}[kind]
        for victim in victims:
            try:
                os.kill(victim, signal.SIGKILL)
            except (ProcessLookupError, TypeError):
                pass
        proc.communicate()
        wait_gone(left)
        interrupted += proc.returncode != 0
        assert host_view(repo) == before, "kill %d changed the host" % point
        assert locks(repo) == []
        assert_recovers(repo, vm, kept_ok=kind == "vm")
        for ref in repo.vm_git(vm, "for-each-ref", "--format=%(refname)", "refs/slicer/kept/").split():
            repo.vm_git(vm, "update-ref", "-d", ref)     # looked at and dropped, so the next kill starts clean
    assert interrupted, "no push was interrupted: the sweep tested nothing"
