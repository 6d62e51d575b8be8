"""Each protection layer on its own, against the same crafted inputs (no VM needed): the strict
tar reader, path rules, the safe writer and the state checks. These fail if a layer is removed
even where another layer would still stop the end-to-end attack."""

import os

import pytest

from git_slicer.errors import UnsafeInput, WouldLoseWork
from git_slicer.quarantine import check_state
from git_slicer.safewrite import Change, SafeWriter
from git_slicer.wire.gitobj import Entry
from git_slicer.wire import tarstream
from git_slicer.wire.paths import UnsafePath, check_relpath, collision_key
from hostile_agent import build_tar, oid


def read(tmp_path, members, **limits):
    staging = tmp_path / "stage"
    staging.mkdir(exist_ok=True)
    return tarstream.read_members([build_tar(members)], str(staging), tarstream.Limits(**limits))


@pytest.mark.parametrize("name", ["/etc/x", "../x", "a/../../x", ".git/config", ".GIT/x", "git~1/x", ".git./x",
                                  ".g\u200cit/x", "a\nb", "\x1b[1m", "a//b", "./a", ""])
def test_paths_refused(name):
    with pytest.raises(UnsafePath):
        check_relpath(name)


def test_collisions():
    assert collision_key("Foo.txt") == collision_key("foo.txt")
    assert collision_key("caf\u00e9") == collision_key("cafe\u0301")


@pytest.mark.parametrize("members,expect", [
    ([dict(name="docs", type="2", link=".git"), dict(name="docs/hooks/x")], "below a file or symlink"),
    ([dict(name="d/x"), dict(name="d", type="2", link="/etc")], "over an earlier member"),
    ([dict(name="n", type="1", link=".git/config")], "hard link"),
    ([dict(name="x", type="6")], "FIFO"),
    ([dict(name="x"), dict(name="X")], "colliding"),
    ([dict(name="l", type="2", link="t", size=10)], "bad size"),
])
def test_tar_reader_refuses(tmp_path, members, expect):
    with pytest.raises(tarstream.UnsafeArchive, match=expect):
        read(tmp_path, members)


def test_tar_limits(tmp_path):
    with pytest.raises(tarstream.UnsafeArchive, match="more than 2 members"):
        read(tmp_path, [dict(name="a"), dict(name="b"), dict(name="c")], max_entries=2)
    with pytest.raises(tarstream.UnsafeArchive, match="larger than 3 bytes"):
        read(tmp_path, [dict(name="a", data="abcd")], max_file_bytes=3)
    with pytest.raises(tarstream.UnsafeArchive, match="symlink target"):
        read(tmp_path, [dict(name="a", type="2", link="x" * 20)], max_link_bytes=10)


def test_modes_are_sanitised(tmp_path):
    m = read(tmp_path, [dict(name="a", mode=0o6777), dict(name="b", mode=0o4666)])
    assert [x.mode for x in m] == [0o755, 0o644]


def _change(tmp_path, path, data=b"x", expect=None):
    src = tmp_path / ("src-%d" % len(os.listdir(tmp_path)))
    src.write_bytes(data)
    return Change(path=path, expect=expect, new=Entry("100644", oid(data)), source=str(src))


def test_writer_never_follows_a_symlink_on_the_way(tmp_path):
    root, outside = tmp_path / "wt", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(str(outside), root / "build")
    with pytest.raises(WouldLoseWork, match="build is a symlink"):
        SafeWriter(str(root)).apply([_change(tmp_path, "build/x")])
    assert os.listdir(outside) == []


def test_writer_refuses_dotgit_and_below_a_new_link(tmp_path):
    root = tmp_path / "wt"
    root.mkdir()
    with pytest.raises(UnsafeInput):
        SafeWriter(str(root)).apply([_change(tmp_path, ".git/hooks/pre-commit")])
    link = Change(path="l", expect=None, new=Entry("120000", oid(b"/etc")), target="/etc")
    with pytest.raises(UnsafeInput, match="below the file or symlink"):
        SafeWriter(str(root)).apply([link, _change(tmp_path, "l/x")])
    assert os.listdir(root) == []


def test_writer_is_all_or_nothing(tmp_path):
    root = tmp_path / "wt"
    root.mkdir()
    (root / "a").write_bytes(b"old")
    (root / "z").write_bytes(b"host edit")
    changes = [_change(tmp_path, "a", b"new", expect=["100644", oid(b"old")]),
               _change(tmp_path, "m/new", b"n"),
               _change(tmp_path, "z", b"vm", expect=["100644", oid(b"base")])]
    with pytest.raises(WouldLoseWork, match="z changed"):
        SafeWriter(str(root)).apply(changes)
    assert sorted(os.listdir(root)) == ["a", "z"] and (root / "a").read_bytes() == b"old"


def test_state_check():
    good = {"exists": True, "head": "a" * 40, "branch": "main", "branches": {"main": "a" * 40},
            "overlay": {"index": {}, "files": {"ok.txt": ["100644", "b" * 40]}}}
    assert check_state(good) is good
    entry = good["overlay"]["files"]["ok.txt"]          # validated entries are read by name
    assert (entry.mode, entry.oid) == ("100644", "b" * 40) and entry == ["100644", "b" * 40]
    for files in ({"../x": None}, {"x": ["100644", "zz"]}, {"x": ["040000", "b" * 40]},
                  {"x": [["100644"], "b" * 40]}, {"x": ["100644", "b" * 40, "extra"]}):
        with pytest.raises(UnsafeInput):
            check_state({**good, "overlay": {"index": {}, "files": files}})
    with pytest.raises(UnsafeInput, match="more than 1"):
        check_state({**good, "overlay": {"index": {"a": None}, "files": {"b": None}}}, max_entries=1)



def test_kept_refs_a_vm_names_are_checked_before_they_are_shown():
    """A state reply's `kept` (agent/kept.py) puts a ref name and paths from the VM into a
    warning and a command to run: only refs under refs/slicer/kept/ with plain names pass."""
    good = {"exists": True, "head": "a" * 40, "branch": "main", "branches": {"main": "a" * 40},
            "overlay": {"index": {}, "files": {}}}
    ok = {"ref": "refs/slicer/kept/0123abc-2", "paths": ["src/app.py", "a\tb"]}
    assert check_state({**good, "kept": [ok]})["kept"] == [ok]
    for kept in ("refs/slicer/kept/x", [{"ref": "refs/heads/main", "paths": []}],
                 [{"ref": "refs/slicer/kept/x;rm -rf ~", "paths": []}], [{"ref": "refs/slicer/kept/x\n", "paths": []}],
                 [{"ref": "refs/slicer/kept/x", "paths": ["../etc/passwd"]}], [{"ref": "refs/slicer/kept/x", "paths": [7]}],
                 [{"ref": "refs/slicer/kept/x", "paths": ["a"] * 1001}], [{"ref": "refs/slicer/kept/x"}]):
        with pytest.raises(UnsafeInput, match="kept"):
            check_state({**good, "kept": kept})


def test_branch_names_are_checked_as_libgit2_checks_them():
    """inbound.valid_refname (pure Python, so a pull needs no pygit2 import) accepts exactly the
    names libgit2's reference_is_valid_name accepts, on tricky names and on random ones."""
    import random
    from pygit2 import reference_is_valid_name
    from git_slicer.inbound import valid_refname
    assert not valid_refname("refs/heads/a\x00b")     # libgit2 sees "a" (a C string): NUL breaks update-ref -z
    assert not valid_refname("refs/heads/\ud800")     # not UTF-8 (libgit2: an exception)
    names = ["main", "a/b", "a//b", "/a", "a/", ".a", "a/.b", "a.", "a/b.", "a..b", "a.lock", "a/b.lock/c",
             "a.lock.b", "@", "a@{b", "a@b", "@{", "a b", "a\tb", "a\x7fb", "a~b", "a^b", "a:b", "a?b", "a*b",
             "a[b", "a\\b", "a]b", "é", "日本/語", "-a", "a-", "a/./b", "a/../b", "..", ".", "lock", ".lock",
             "HEAD", "a{b", "a}b", "x" * 300, "a.b/c.d", "a/@/b", "@/a"]
    rng = random.Random(15)
    alphabet = "ab./@{}~^:?*[]\\ -\x01\x7fé"
    names += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))) for _ in range(5000)]
    for name in names:
        expected = reference_is_valid_name("refs/heads/" + name)
        assert valid_refname("refs/heads/" + name) == expected, repr(name)
