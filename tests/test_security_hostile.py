"""A hostile VM (tests/hostile_agent.py, a named test double) sends crafted input to `git slicer
pull`: file streams, repository states, packs, branch names and broken frames. Each test checks
the pull fails with a clear, escaped message and the host repository (refs, objects, config,
hooks, index) and worktree are byte-for-byte unchanged.

Case numbers refer to the list of bad inputs in SECURITY.md.
"""

import os
import re

import pytest

import hostile_agent
from hostile_agent import install, vm_home

FAKE = "ab" * 20        # a blob id the host does not have: the host must ask the VM for the file


def attack(repo, vm, scenario, expect, config=()):
    for key, value in config:
        repo.git("config", key, value)
    install(repo, vm, scenario)
    before = repo.fingerprint()
    proc = repo.slicer("pull", vm, check=False)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode != 0, err
    assert re.search(expect, err), err
    assert "internal error" not in err and "Traceback" not in err, err
    assert "\x1b" not in err and "\x07" not in err, err
    assert repo.fingerprint() == before, "the host changed: " + err
    objects = repo.path / ".git" / "objects"
    assert not [n for n in os.listdir(objects) if n.startswith("incoming-")], "quarantine left behind"
    return err


def tar_attack(repo, vm, members, expect, config=(), **extra):
    scenario = {"name": "tar", "state": {"overlay_files": {"x.txt": ["100644", FAKE]}}, "tar": members}
    scenario.update(extra)
    return attack(repo, vm, scenario, expect, config)


def f(name, data="x", **kw):
    return dict(name=name, type="0", data=data, **kw)


def link(name, target):
    return dict(name=name, type="2", link=target)


# ------------------------------------------------------------------ files from the VM (1-14, 36)
TAR_CASES = {
    "01-absolute": ([f("/etc/x")], "absolute path"),
    "02-dotdot": ([f("../x")], r"'\.\.'"),
    "02-dotdot-inner": ([f("a/../../x")], r"'\.\.'"),
    "03-symlink-then-below": ([link("l", "/etc"), f("l/passwd")], "below a file or symlink"),
    "04-symlink-to-dotgit": ([link("docs", ".git"), f("docs/hooks/post-checkout", "#!/bin/sh\n", mode=0o755)],
                             "below a file or symlink"),
    "04-into-dotgit": ([f(".git/hooks/post-checkout")], r"inside a \.git"),
    "05-hardlink-to-config": ([dict(name="notes.txt", type="1", link=".git/config"), f("notes.txt")],
                              "hard link"),
    "06-hardlink-to-later-symlink": ([dict(name="a", type="1", link="deep/l"), link("deep/l", "/etc/passwd")],
                                     "hard link"),
    "07-symlink-empty-name": ([link("", "/etc"), f("x.txt")], "empty"),
    "07-symlink-dir-like-name": ([link("dir/", "/etc"), f("dir/x")], "empty"),
    "08-char-device": ([dict(name="x.txt", type="3")], "character device"),
    "08-block-device": ([dict(name="x.txt", type="4")], "block device"),
    "08-fifo": ([dict(name="x.txt", type="6")], "FIFO"),
    "10-duplicate": ([f("x.txt"), f("x.txt")], "duplicate"),
    "11-case-collision": ([f("Foo.txt"), f("foo.txt")], "colliding"),
    "11-unicode-collision": ([f("caf\u00e9"), f("cafe\u0301")], "colliding"),
    "11-dotgit-spellings": ([f("x/.GIT/config")], r"inside a \.git"),
    "11-dotgit-ntfs": ([f("git~1/config")], r"inside a \.git"),
    "11-dotgit-zero-width": ([f(".g\u200cit/config")], r"inside a \.git"),
    "13-path-too-long": ([f("a/" * 2100 + "x")], "longer than"),
    "13-path-too-deep": ([f("d/" * 70 + "x")], "deeper than"),
    "13-link-target-too-long": ([link("x.txt", "a/" * 3000)], "oversized symlink target"),
    "14-newline": ([f("a\nb")], "control characters"),
    "14-ansi-escape": ([f("\x1b[31mred")], "control characters"),
    "14-nul-in-pax-name": ([f("a\x00b\u00e9")], "control characters"),
    "36-sparse": ([dict(name="x.txt", type="S")], "sparse"),
    "36-gnu-longname": ([dict(name="x.txt", type="L")], "GNU long name"),
    "36-huge-member": ([dict(name="x.txt", type="0", size=1 << 40)], "larger than"),
    "not-asked-for": ([f("other.txt")], "other files than were asked"),
    "other-bytes-than-announced": ([f("x.txt", "not the announced bytes\n")], "does not match its announced contents"),
}


@pytest.mark.parametrize("case", sorted(TAR_CASES))
def test_crafted_file_stream_is_refused(launched, case):
    repo, vm = launched
    members, expect = TAR_CASES[case]
    tar_attack(repo, vm, members, expect)


def test_36_ten_million_entries_stop_at_the_cap(launched):
    repo, vm = launched
    tar_attack(repo, vm, [], "more than 1000 members", config=[("slicer.limit.files", "1000")],
               tar_stream="endless")


def test_36_total_bytes_cap(launched):
    repo, vm = launched
    big = "z" * 700_000
    tar_attack(repo, vm, [f("x.txt", big), f("y.txt", big)], "larger than 1048576 bytes",
               config=[("slicer.limit.totalBytes", "1m")])


def test_09_setuid_and_group_write_bits_are_stripped(launched):
    repo, vm = launched
    members = [f("tool.sh", "#!/bin/sh\n", mode=0o6777, announce="tool.sh", announce_mode="100755"),
               f("plain.txt", "plain\n", mode=0o4666, announce="plain.txt")]
    install(repo, vm, {"name": "tar", "announce_tar": True, "tar": members})
    repo.slicer("pull", vm)
    assert (repo.path / "tool.sh").stat().st_mode & 0o7777 == 0o755
    assert (repo.path / "plain.txt").stat().st_mode & 0o7777 == 0o644
    assert (repo.path / "plain.txt").read_text() == "plain\n"


def test_03_symlink_and_file_below_it_in_one_pull(launched):
    """The VM announces a symlink `l` and a file `l/x` (each valid alone): refused as a pair."""
    repo, vm = launched
    members = [link("l", "/etc"), f("m/x", "x")]
    scenario = {"name": "tar", "tar": members,
                "state": {"overlay_files": {"l": ["120000", hostile_agent.oid(b"/etc")],
                                            "l/x": ["100644", hostile_agent.oid(b"x")]}}}
    attack(repo, vm, scenario, "below the file or symlink l|other files")


# ------------------------------------------------------------------ repository state from the VM
STATE_CASES = {
    "overlay-absolute": ({"overlay_files": {"/etc/passwd": ["100644", FAKE]}}, "absolute path"),
    "overlay-dotdot": ({"overlay_files": {"../outside": ["100644", FAKE]}}, r"'\.\.'"),
    "overlay-dotgit": ({"overlay_files": {".git/hooks/pre-commit": ["100755", FAKE]}}, r"inside a \.git"),
    "overlay-index-dotgit": ({"overlay_index": {".GIT/config": ["100644", FAKE]}}, r"inside a \.git"),
    "overlay-bad-mode": ({"overlay_files": {"x": ["140000", FAKE]}}, "malformed repository state"),
    "overlay-bad-oid": ({"overlay_files": {"x": ["100644", "../../etc"]}}, "malformed repository state"),
    "overlay-not-a-list": ({"overlay_files": {"x": "100644"}}, "malformed repository state"),
    "branches-not-a-dict": ({"set_branches": ["main"]}, "malformed repository state"),
    "stash-not-an-oid": ({"stash": "refs/heads/main; rm -rf ~"}, "malformed repository state"),
    "14-ansi-path": ({"overlay_files": {"\x1b]0;pwned\x07": ["100644", FAKE]}}, "control characters"),
    "kept-ref-outside": ({"kept": [{"ref": "refs/heads/main", "paths": ["x"]}]}, "malformed repository state: kept"),
    "kept-ref-command": ({"kept": [{"ref": "refs/slicer/kept/x`rm -rf ~`", "paths": []}]},
                         "malformed repository state: kept"),
    "kept-path-dotdot": ({"kept": [{"ref": "refs/slicer/kept/x", "paths": ["../x"]}]}, "malformed repository state: kept"),
}


def test_a_vm_claiming_many_kept_refs_gets_four_warning_lines_with_escaped_paths(launched):
    """`kept` (agent/kept.py) is the VM's word only: the host shows it, escaped, and a VM that
    claims a hundred refs does not flood the terminal."""
    repo, vm = launched
    kept = [{"ref": "refs/slicer/kept/k%d" % i, "paths": ["\x1b[2Jx%d" % i]} for i in range(100)]
    install(repo, vm, {"name": "state", "state": {"kept": kept}})
    proc = repo.slicer("status", vm)
    err = proc.stderr.decode()
    assert "\x1b" not in err
    lines = [line for line in err.splitlines() if "refs/slicer/kept" in line]
    assert len(lines) == 4 and "97 more refs" in lines[-1], err
    assert repo.slicer_json("status", vm)["vm_side"]["kept"] == kept


@pytest.mark.parametrize("case", sorted(STATE_CASES))
def test_crafted_state_is_refused(launched, case):
    repo, vm = launched
    state, expect = STATE_CASES[case]
    attack(repo, vm, {"name": "state", "state": state}, expect)


def test_23_branch_names_are_validated_and_never_reach_config(launched):
    repo, vm = launched
    head = repo.git("rev-parse", "HEAD").strip()
    bad = ["a..b", "x@{1}", "new\nline", "../../config", "refs/heads/../../config", "\x1b[31mred",
           "ends.lock", "sp ace", "[remote \"x\"]\n\turl=evil"]
    install(repo, vm, {"name": "state", "state": {"branches": {name: head for name in bad}}})
    config = (repo.path / ".git" / "config").read_bytes()
    proc = repo.slicer("pull", vm, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert err.count("ignoring VM branch with an invalid name") == len(bad), err
    assert "\x1b" not in err
    assert (repo.path / ".git" / "config").read_bytes() == config
    refs = repo.git("for-each-ref", "--format=%(refname)").split()
    assert refs == ["refs/heads/main", "refs/slicer/%s/main" % vm], refs


# ------------------------------------------------------------------ packs from the VM (21, 22, 24, 35)
def test_24_garbage_pack_fails_verification_and_quarantine_is_removed(launched):
    repo, vm = launched
    import base64
    pack = base64.b64encode(b"PACK\0\0\0\2\0\0\0\3" + os.urandom(400)).decode()
    attack(repo, vm, {"name": "pack", "state": {"branches": {"evil": FAKE}}, "pack": pack},
           "pack from the VM failed verification")


def _empty_pack() -> str:
    import base64
    import hashlib
    header = b"PACK\0\0\0\2\0\0\0\0"
    return base64.b64encode(header + hashlib.sha1(header).digest()).decode()


@pytest.mark.parametrize("announced", ["branch", "staged blob"])
def test_a_pack_without_what_the_vm_announced_is_refused(launched, announced):
    """A valid pack that lacks the branch tip (or the staged blob) the VM's state names: nothing
    lands, whichever check notices it."""
    repo, vm = launched
    state = {"branches": {"evil": FAKE}} if announced == "branch" else \
        {"overlay_index": {"staged.txt": ["100644", FAKE]}}
    attack(repo, vm, {"name": "pack", "state": state, "pack": _empty_pack()},
           "the VM's pack lacks objects it announced \\(%s\\)" % FAKE[:12])


def test_22_bundle_instead_of_pack_is_refused(launched):
    repo, vm = launched
    repo.vm_sh(vm, "git bundle create -q ~/.hostile-bundle main 2>/dev/null || git bundle create ~/.hostile-bundle main")
    os.replace(vm_home(vm) / ".hostile-bundle", vm_home(vm) / "b.bundle")
    directory = install(repo, vm, {"name": "x"})
    os.replace(vm_home(vm) / "b.bundle", directory / "b.bundle")
    attack(repo, vm, {"name": "pack", "state": {"branches": {"evil": FAKE}}, "pack_file": "b.bundle"},
           "not a git pack")


def test_21_malformed_commit_is_rejected_and_no_ref_touched(launched):
    repo, vm = launched
    script = ("c=$(printf 'tree zzzz\\nauthor nobody\\n\\nbad\\n' | git hash-object -t commit --literally -w --stdin) && "
              "echo $c > ~/evil.oid && echo $c | git pack-objects -q --stdout > ~/evil.pack")
    repo.vm_sh(vm, script)
    oid = (vm_home(vm) / "evil.oid").read_text().strip()
    directory = install(repo, vm, {"name": "x"})
    os.replace(vm_home(vm) / "evil.pack", directory / "evil.pack")
    attack(repo, vm, {"name": "pack", "state": {"branches": {"evil": oid}}, "pack_file": "evil.pack"},
           "failed verification")


def test_35_pack_over_the_size_limit_is_cut_off(launched):
    repo, vm = launched
    attack(repo, vm, {"name": "pack", "state": {"branches": {"evil": FAKE}}, "pack_stream": "endless"},
           "exceeds the limit of|exceeds slicer.limit.packBytes|exceeds maximum allowed size", config=[("slicer.limit.packBytes", "1m")])


def test_35_pack_announcing_too_many_objects_is_refused_at_the_header(launched):
    repo, vm = launched
    import base64
    pack = base64.b64encode(b"PACK\0\0\0\2" + (2_000_000).to_bytes(4, "big") + b"\0" * 100).decode()
    attack(repo, vm, {"name": "pack", "state": {"branches": {"evil": FAKE}}, "pack": pack},
           r"2000000 objects, over slicer.limit.objects")


def test_38_stream_with_a_wrong_length_is_refused(launched):
    repo, vm = launched
    attack(repo, vm, {"name": "pack", "state": {"branches": {"evil": FAKE}}, "pack_stream": "bad-length"},
           "stream length mismatch")


# ------------------------------------------------------------------ the channel (37, 38)
CHANNEL_CASES = {
    "38-oversized-frame": ("oversized", "exceeds the limit of"),
    "38-truncated-frame": ("truncated", "in the middle of a frame"),
    "38-unknown-frame-type": ("bad-type", "unknown frame type"),
    "38-not-json": ("not-json", "malformed control message"),
    "37-flood-of-data-frames": ("flood", "expected a control message"),
    "14-escapes-in-error-message": ("escape", r"\\x1b\[2J"),
}


@pytest.mark.parametrize("case", sorted(CHANNEL_CASES))
def test_broken_channel_is_refused(launched, case):
    repo, vm = launched
    mode, expect = CHANNEL_CASES[case]
    attack(repo, vm, {"name": "raw-state", "mode": mode}, expect)


def test_37_silent_vm_hits_the_time_limit(launched):
    repo, vm = launched
    attack(repo, vm, {"name": "raw-state", "mode": "silent"}, r"did not finish within slicer.limit.seconds \(3 s\)",
           config=[("slicer.limit.seconds", "3")])


def test_frame_limit_is_configurable(launched):
    repo, vm = launched
    big = {"p%05d" % i: ["100644", FAKE] for i in range(3000)}
    attack(repo, vm, {"name": "state", "state": {"overlay_files": big}}, "exceeds the limit of 65536",
           config=[("slicer.limit.frameBytes", "64k")])
