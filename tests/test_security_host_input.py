"""Careless host input: broken link files, settings out of range, ignore files that are not
regular files. Each case is one clear line on stderr (exit 1, or 2 for usage), never an
"internal error" or a traceback, and never a hang or unbounded read (SECURITY.md, guarantees 10
and 11)."""

import os
import re
import threading

import pytest

from conftest import run


def link_file(repo, vm):
    return repo.path / ".git" / "slicer" / "links" / ("%s.json" % vm)


def put_link(content):
    def setup(repo, vm, tmp):
        link_file(repo, vm).write_bytes(content)
    return setup


def config(key, value):
    def setup(repo, vm, tmp):
        repo.git("config", key, value)
    return setup


def slicerignore(kind):
    def setup(repo, vm, tmp):
        target = repo.path / ".slicerignore"
        if kind == "symlink-to-dev-zero":
            os.symlink("/dev/zero", target)
        elif kind == "fifo":
            os.mkfifo(target)
        elif kind == "directory":
            target.mkdir()
            (target / "x").write_text(".env\n")
        elif kind == "bad-pattern":
            target.write_text(".env\n!\n")
        elif kind == "too-big":
            target.write_bytes(b"a" * (2 << 20))
    return setup


def vm_dir_is_a_file(repo, vm, tmp):
    (tmp / "not-a-dir").write_text("x")
    repo.git("config", "slicer.vmDir", str(tmp / "not-a-dir"))


CORRUPT = r"link file .*%s\.json is corrupt \(%s\)"
CASES = {
    # link files
    "link-empty": (put_link(b""), ["status"], 1, CORRUPT % ("vm-1", "empty")),
    "link-empty-list": (put_link(b"[]"), ["pull", "vm-1"], 1, CORRUPT % ("vm-1", "not a JSON object")),
    "link-garbage": (put_link(b"{garbage"), ["push"], 1, CORRUPT % ("vm-1", "not JSON")),
    "link-not-utf8": (put_link(b"\xff\xfe{}"), ["diff"], 1, CORRUPT % ("vm-1", "not JSON")),
    "link-wrong-type": (put_link(b'{"agreed_commit": 5}'), ["status"], 1,
                        CORRUPT % ("vm-1", "agreed_commit is not a str")),
    "link-bad-entry": (put_link(b'{"agreed_overlay": {"index": {}, "files": {"a": "100644"}}}'), ["status"], 1,
                       CORRUPT % ("vm-1", "agreed_overlay is malformed")),
    "link-deep-json": (put_link(b"[" * 100000), ["status"], 1, CORRUPT % ("vm-1", "not JSON")),
    "link-in-hooks-status": (put_link(b"[]"), ["hooks", "status"], 1, CORRUPT % ("vm-1", "not a JSON object")),
    "link-in-list": (put_link(b"\0\0"), ["list"], 1, CORRUPT % ("vm-1", "not JSON")),
    # settings
    "limit-negative": (config("slicer.limit.files", "-1"), ["pull", "vm-1"], 2,
                       r"slicer\.limit\.files must be between 1 and"),
    "limit-zero": (config("slicer.limit.seconds", "0"), ["push"], 2, r"slicer\.limit\.seconds must be between 1"),
    "limit-too-big": (config("slicer.limit.seconds", "99999999999"), ["push"], 2,
                      r"slicer\.limit\.seconds must be between 1 and 604800"),
    "limit-not-a-number": (config("slicer.limit.refs", "12q"), ["pull", "vm-1"], 2,
                           r"bad number '12q' for slicer\.limit\.refs"),
    "progress-unknown": (config("slicer.progress", "sometimes"), ["push"], 2,
                         r"slicer\.progress must be auto, always, never \(got 'sometimes'\)"),
    "guest-path-dotdot": (config("slicer.guestPath", "~/../../etc"), ["push", "--launch"], 2,
                          r"slicer\.guestPath must be `~/DIR`"),
    "guest-path-home-itself": (config("slicer.guestPath", "~"), ["push", "--launch"], 2, r"slicer\.guestPath must be"),
    "guest-path-relative": (config("slicer.guestPath", "work/x"), ["push", "--launch"], 2,
                            r"slicer\.guestPath must be"),
    "vm-dir-is-a-file": (vm_dir_is_a_file, ["vm", "list"], 2, r"slicer\.vmDir .*not-a-dir is not a directory"),
    # ignore files the host reads (a VM can shape them through a pull)
    "slicerignore-symlink-status": (slicerignore("symlink-to-dev-zero"), ["status"], 1,
                                    r"\.slicerignore is a symlink"),
    "slicerignore-symlink-push": (slicerignore("symlink-to-dev-zero"), ["push"], 1, r"\.slicerignore is a symlink"),
    "slicerignore-symlink-pull": (slicerignore("symlink-to-dev-zero"), ["pull", "vm-1"], 1,
                                  r"\.slicerignore is a symlink"),
    "slicerignore-symlink-diff": (slicerignore("symlink-to-dev-zero"), ["diff"], 1, r"\.slicerignore is a symlink"),
    "slicerignore-fifo-push": (slicerignore("fifo"), ["push"], 1, r"\.slicerignore is a FIFO"),
    "slicerignore-directory-push": (slicerignore("directory"), ["push"], 1, r"\.slicerignore is a directory"),
    "slicerignore-bad-pattern": (slicerignore("bad-pattern"), ["push"], 1, r"\.slicerignore line 2: invalid pattern"),
    "slicerignore-too-big": (slicerignore("too-big"), ["status"], 1, r"\.slicerignore is larger than 1048576 bytes"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_careless_host_input_is_one_clear_line(launched, tmp_path, case):
    repo, vm = launched
    assert vm == "vm-1"
    setup, argv, code, expect = CASES[case]
    setup(repo, vm, tmp_path)
    result = {}

    def command():                      # a FIFO must not hang us: the test fails instead
        result["proc"] = repo.slicer(*argv, check=False)
    thread = threading.Thread(target=command, daemon=True)
    thread.start()
    thread.join(120)
    if thread.is_alive():
        with open(repo.path / ".slicerignore", "wb"):     # release a reader blocked on the FIFO
            pass
        thread.join(10)
        pytest.fail("%s hung" % " ".join(argv))
    proc = result["proc"]
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == code, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(expect, errors[0]), err
    assert "internal error" not in err and "Traceback" not in err, err


def test_corrupt_link_says_how_to_fix_it_and_unlink_removes_it(launched):
    repo, vm = launched
    link_file(repo, vm).write_bytes(b"[]")
    err = repo.slicer("status", check=False).stderr.decode()
    assert "hint: restore it, or remove it with `git slicer unlink vm-1` and push again" in err, err
    repo.slicer("unlink", vm)
    repo.slicer("push", "--force", vm)
    assert repo.slicer_json("status")["in_sync"]


def test_a_stray_file_in_the_links_directory_breaks_nothing(launched):
    repo, vm = launched
    stray = link_file(repo, vm).with_name("old copy.json")
    stray.write_bytes(link_file(repo, vm).read_bytes())
    proc = repo.slicer("status")
    assert proc.returncode == 0
    assert "ignoring %s: not a link file name" % stray in proc.stderr.decode()
    assert repo.slicer_json("hooks", "status")["vms"][0]["vm"] == vm
    assert [row["vm"] for row in repo.slicer_json("list")] == [vm]


def test_garbage_autopush_state_and_corrupt_link_in_the_background_push(launched):
    repo, vm = launched
    slicer = repo.path / ".git" / "slicer"
    (slicer / "autopush.json").write_bytes(b"[]")
    repo.slicer("hooks", "install")
    assert repo.slicer_json("hooks", "status")["vms"][0]["vm"] == vm
    link_file(repo, vm).write_bytes(b"\xff")
    repo.write("x.txt", "x\n")
    repo.commit("trigger the hook")
    from git_slicer import autopush
    assert autopush.wait_idle(str(slicer), 60)
    log = (slicer / "autopush.log").read_text()
    assert re.search(r"failed: link file .*vm-1\.json is corrupt \(not JSON\)", log), log
    assert "internal error" not in log


def test_missing_vm_dir_is_an_empty_list_and_push_creates_it(repo, tmp_path):
    repo.git("config", "slicer.vmDir", str(tmp_path / "vms" / "not-yet"))
    assert repo.slicer_json("vm", "list") == []
    vm = repo.slicer_json("push", "--launch")["vm"]
    assert (tmp_path / "vms" / "not-yet" / vm).is_dir()
    assert run(["ls"], cwd=repo.path).returncode == 0
