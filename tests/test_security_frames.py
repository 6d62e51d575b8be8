"""Hostile agent frames (tests/hostile_agent.py plays the compromised VM): deep JSON, terminal
escapes in the hello, wrongly typed states, too many or conflicting branches. Each case is one
clear, escaped line and leaves the host byte-for-byte unchanged, whichever command met it
(SECURITY.md, guarantee 7 and cases 43-46)."""

import re

import pytest

from hostile_agent import install

HEAD = "HEAD"          # replaced by the host's HEAD commit in the scenario


def scenario(name, **state):
    return {"name": name, "state": state}


CASES = {
    "deep-json-pull": ({"name": "raw-state", "mode": "deep"}, ["pull"], (), r"nested deeper than 32 levels"),
    "deep-json-status": ({"name": "raw-state", "mode": "deep"}, ["status"], (), r"nested deeper than 32 levels"),
    "deep-json-diff": ({"name": "raw-state", "mode": "deep"}, ["diff"], (), r"nested deeper than 32 levels"),
    "mistyped-ahead-status": (scenario("state", ahead="many"), ["status"], (), r"malformed repository state: ahead"),
    "mistyped-exists-status": (scenario("state", exists="yes"), ["status"], (), r"malformed repository state"),
    "mistyped-branches-log": (scenario("state", set_branches=["main"]), ["log"], (),
                              r"malformed repository state: branches"),
    "mistyped-overlay-diff": (scenario("state", overlay_files={"x": "100644"}), ["diff"], (),
                              r"malformed repository state"),
    "too-many-branches-pull": (scenario("state", branches={"b%03d" % i: HEAD for i in range(40)}), ["pull"],
                               [("slicer.limit.refs", "20")], r"reports 41 branches, over slicer\.limit\.refs \(20\)"),
    "too-many-branches-log": (scenario("state", branches={"b%03d" % i: HEAD for i in range(40)}), ["log"],
                              [("slicer.limit.refs", "20")], r"over slicer\.limit\.refs"),
    "branch-and-directory-pull": (scenario("state", branches={"a": HEAD, "a/b": HEAD}), ["pull"], (),
                                  r"branches a and a/b, which cannot both be refs"),
    "branch-and-directory-diff": (scenario("state", branches={"x/y": HEAD, "x/y/z": HEAD}), ["diff"], (),
                                  r"branches x/y and x/y/z, which cannot both be refs"),
}


def with_head(value, head):
    if isinstance(value, dict):
        return {k: with_head(v, head) for k, v in value.items()}
    return head if value == HEAD else value


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_frames_are_one_clear_line_and_change_nothing(launched, case):
    repo, vm = launched
    scene, argv, config, expect = CASES[case]
    for key, value in config:
        repo.git("config", key, value)
    install(repo, vm, with_head(scene, repo.git("rev-parse", "HEAD").strip()))
    before = repo.fingerprint()
    proc = repo.slicer(*argv, vm, check=False)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(expect, errors[0]), err
    assert "internal error" not in err and "Traceback" not in err and "\x1b" not in err, err
    assert repo.fingerprint() == before, "the host changed: " + err


def test_escapes_in_the_agents_hello_never_reach_the_terminal(launched):
    repo, vm = launched
    install(repo, vm, {"name": "hello-escapes"})
    for argv in (["-v", "status", vm], ["status", "-v", vm], ["push", "-v", vm]):
        proc = repo.slicer(*argv, check=False)
        out = proc.stdout + proc.stderr
        assert b"\x1b" not in out and b"\x07" not in out and b"\r" not in out, out
        assert b"\\x1b]0;pwned\\x07" in proc.stderr, proc.stderr      # shown, escaped
        assert proc.returncode == 0, proc.stderr


def test_vm_branches_move_in_one_transaction_all_or_none(launched):
    repo, vm = launched
    head = repo.git("rev-parse", "HEAD").strip()
    install(repo, vm, scenario("state", branches={"a": head, "b": head, "c": head}))
    lock = repo.path / ".git" / "refs" / "slicer" / vm / "b.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("")                                       # another git holds refs/slicer/VM/b
    proc = repo.slicer("pull", "--no-merge", vm, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "could not record VM %s's branches" % vm in err, err
    assert "internal error" not in err
    assert repo.git("for-each-ref", "--format=%(refname)", "refs/slicer/").split() == [], err
    lock.unlink()
    repo.slicer("pull", "--no-merge", vm)
    refs = repo.git("for-each-ref", "--format=%(refname)", "refs/slicer/%s/" % vm).split()
    assert refs == ["refs/slicer/%s/%s" % (vm, n) for n in ("a", "b", "c", "main")]


def test_a_stale_ref_in_the_way_of_a_new_branch_is_replaced(launched):
    """Real git in the VM: branch `a` pulled once, then the VM renames it to `a/b`."""
    repo, vm = launched
    repo.vm_sh(vm, "git branch a")
    repo.slicer("pull", vm)
    repo.vm_sh(vm, "git branch -D a && git branch a/b")
    repo.slicer("pull", vm)
    refs = repo.git("for-each-ref", "--format=%(refname)", "refs/slicer/%s/" % vm).split()
    assert refs == ["refs/slicer/%s/a/b" % vm, "refs/slicer/%s/main" % vm]
    repo.vm_sh(vm, "git branch -D a/b && git branch a")
    repo.slicer("pull", vm)
    refs = repo.git("for-each-ref", "--format=%(refname)", "refs/slicer/%s/" % vm).split()
    assert refs == ["refs/slicer/%s/a" % vm, "refs/slicer/%s/main" % vm]



BIG_STATE = scenario("state", overlay_files={"p%05d" % i: ["100644", "ab" * 20] for i in range(3000)})
SILENT = {"name": "raw-state", "mode": "silent"}
LIMITED = {
    "frame-status": (BIG_STATE, ["status"], "exceeds the limit of 65536"),
    "frame-diff": (BIG_STATE, ["diff"], "exceeds the limit of 65536"),
    "frame-log": (BIG_STATE, ["log"], "exceeds the limit of 65536"),
    "frame-fetch": (BIG_STATE, ["fetch"], "exceeds the limit of 65536"),
    "deadline-status": (SILENT, ["status"], r"did not finish within slicer\.limit\.seconds \(3 s\)"),
    "deadline-diff": (SILENT, ["diff"], r"did not finish within slicer\.limit\.seconds \(3 s\)"),
    "deadline-log": (SILENT, ["log"], r"did not finish within slicer\.limit\.seconds \(3 s\)"),
    "deadline-fetch": (SILENT, ["fetch"], r"did not finish within slicer\.limit\.seconds \(3 s\)"),
}


@pytest.mark.parametrize("case", sorted(LIMITED))
def test_every_command_is_under_the_frame_and_deadline_limits(launched, case):
    """status, diff, log and the remote helper (`git fetch slicer::VM`) apply the same
    slicer.limit.frameBytes and slicer.limit.seconds as push and pull."""
    repo, vm = launched
    scene, argv, expect = LIMITED[case]
    repo.git("config", "slicer.limit.frameBytes", "64k")
    repo.git("config", "slicer.limit.seconds", "3")
    install(repo, vm, scene)
    skip = (".git/FETCH_HEAD",) if argv == ["fetch"] else ()     # git's own record of the attempt
    before = repo.fingerprint(skip)
    if argv == ["fetch"]:
        proc = run_git_fetch(repo, vm)
    else:
        proc = repo.slicer(*argv, vm, check=False)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode != 0, err
    assert re.search(expect, err), err
    assert "internal error" not in err and "Traceback" not in err, err
    assert repo.fingerprint(skip) == before, "the host changed: " + err


def run_git_fetch(repo, vm):
    from conftest import run
    return run(["git", "fetch", "-q", "slicer::%s" % vm], cwd=repo.path, check=False)
