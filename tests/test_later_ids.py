"""A push's large files are streamed before their blob ids (git_slicer/laterids.py): the host
hashes them on a thread beside the stream and sends the ids after it; the agent checks the bytes
it staged against them before it applies anything. These tests hold both sides to that: the VM
gets exactly the announced bytes, a wrong or missing id applies nothing, and a file that changes
is refused, never applied torn."""

import json
import os
import sys

import pytest

from git_slicer.laterids import MIN_BYTES, LaterIds
from git_slicer.errors import SlicerError
from git_slicer.wire import overlay as overlay_mod
from test_security_push import git_blob_id

BIG = MIN_BYTES + 12345


def big_bytes(seed: bytes) -> bytes:
    return (seed * (BIG // len(seed) + 1))[:BIG]


def test_a_large_new_file_arrives_whole_and_its_id_is_kept_for_the_next_push(launched):
    repo, vm = launched
    data = big_bytes(b"large file, pushed before its id\n")
    (repo.path / "assets.bin").write_bytes(data)
    result = repo.slicer_json("push", vm)
    assert result["sent"]["files"] == 1
    assert repo.vm_sh(vm, "git hash-object assets.bin").strip() == git_blob_id(data)
    link = json.loads((repo.path / ".git" / "slicer" / "links" / ("%s.json" % vm)).read_text())
    assert link["agreed_overlay"]["files"]["assets.bin"] == ["100644", git_blob_id(data)]
    # The id hashed on the thread is in the stat cache like any other: a later scan can use it.
    cache = json.loads((repo.path / ".git" / "slicer" / "statcache.json").read_text())
    assert cache["assets.bin"][5] == ["100644", git_blob_id(data)]
    assert repo.slicer_json("push", vm)["up_to_date"] is True


def test_a_large_file_the_vm_already_holds_is_compared_by_its_id(launched):
    """A pending id cannot decide reuse: the same large file already in the VM is not sent again."""
    repo, vm = launched
    data = big_bytes(b"the same bytes on both sides\n")
    (repo.path / "same.bin").write_bytes(data)
    repo.slicer("push", vm)
    (repo.path / ".git" / "slicer" / "statcache.json").unlink()    # the next scan hashes it again
    repo.write("small.txt", "a change beside it\n")
    result = repo.slicer_json("push", vm)
    assert result["sent"]["files"] == 1 and result["sent"]["file_bytes"] < 10000, result


def test_a_large_file_changed_after_the_scan_is_refused_not_applied(launched):
    """As test_33b, for a file whose id is hashed beside the stream."""
    from hostile_agent import run_paused
    repo, vm = launched
    target = repo.path / "big.bin"
    target.write_bytes(b"A" * BIG)

    def rewrite_in_place():                   # after the scan: same size, other bytes
        with open(target, "r+b") as fh:
            fh.seek(BIG // 2)
            fh.write(b"B")
    proc, err = run_paused(repo, vm, "pause-push", ["push", vm], rewrite_in_place)
    assert proc.returncode != 0 and b"big.bin changed while it was being sent" in err, err
    assert "big.bin" not in repo.vm_sh(vm, "ls")
    # The agent refused it before journaling anything: the push is not left pending (a
    # `push --launch` removes its new VM again).
    link = json.loads((repo.path / ".git" / "slicer" / "links" / ("%s.json" % vm)).read_text())
    assert link["pending"] is None, link
    repo.slicer("push", vm)                   # and the next push sends what is there now
    assert repo.vm_sh(vm, "git hash-object big.bin").strip() == git_blob_id(target.read_bytes())


def test_later_ids_refuses_a_file_that_changed_or_went_since_the_scan(tmp_path):
    """The host's own check: the thread's read must see the file as the scan's lstat did."""
    algo = "sha1"
    for change in ("rewrite", "remove"):
        path = tmp_path / ("%s.bin" % change)
        path.write_bytes(big_bytes(b"x"))
        later = LaterIds(algo, lambda p: True, eager=False)       # it reads once waited for
        later.attach(overlay_mod.StatCache(), str(tmp_path / "no-such-dir" / "cache.json"))
        entry = later.entry(str(path), path.name)
        assert entry.oid == "0" * 40
        if change == "rewrite":
            path.write_bytes(big_bytes(b"y"))
            os.utime(path, ns=(1, 1))
        else:
            path.unlink()
        with pytest.raises(SlicerError, match="%s changed while it was being sent" % path.name):
            later.wait([path.name])


def test_later_ids_gives_the_blob_id_git_gives(tmp_path, repo):
    data = big_bytes(b"what git hash-object says\n")
    (repo.path / "f.bin").write_bytes(data)
    later = LaterIds("sha1", lambda p: True)
    later.attach(overlay_mod.StatCache(), str(tmp_path / "cache.json"))
    overlay = {"index": {}, "files": {"f.bin": later.entry(str(repo.path / "f.bin"), "f.bin")}}
    assert later.pending(overlay) == ["f.bin"]
    done = later.resolved(overlay)
    assert done["files"]["f.bin"] == ["100644", repo.git("hash-object", "f.bin").strip()]
    assert later.pending(done) == []


# -- the agent's side, driven over a pipe as a hostile host could drive it ---------------------
def _push_pending(tmp_path, after_stream, path="a.bin", data=None, pending=None, tar=True):
    """A push of one pending file to a real agent; `after_stream(session)` sends what follows
    the stream. Returns (the agent's reply, the VM repository)."""
    from git_slicer.session import AgentSession
    from git_slicer.transport import ProcessChannel
    from git_slicer.wire import tarstream
    from conftest import Repo
    vm_repo = Repo(tmp_path / "vm")
    vm_repo.path.mkdir()
    vm_repo.git("init", "-q", "-b", "main")
    vm_repo.write("README.md", "hello\n")
    commit = vm_repo.commit("initial")
    src = tmp_path / "src"
    src.mkdir()
    data = data if data is not None else big_bytes(b"pending bytes\n")
    (src / "a.bin").write_bytes(data)
    channel = ProcessChannel([sys.executable, "-m", "git_slicer.agent", "--stdio"], env=dict(os.environ))
    session = AgentSession(channel, "t")
    session.hello()
    try:
        session.conn.send({"op": "push", "id": "p1", "path": str(vm_repo.path), "branch": "main", "commit": commit,
                           "object_format": "sha1", "overlay": {"index": {}, "files": {path: ["100644", "0" * 40]}},
                           "reuse": [], "extra": [], "pack": False, "tar": tar, "shallow": [], "expect": None,
                           "config": {}, "remotes": {}, "excludes": [], "pending": [path] if pending is None else pending})
        ready = session.conn.recv()
        if not ready.get("ready"):
            return ready, vm_repo
        session.conn.send_stream(tarstream.file_stream(str(src), {}, extra=["a.bin"]))
        after_stream(session, git_blob_id(data))
        return session.conn.recv(), vm_repo
    finally:
        session.close()
        channel.proc.wait(10)


def test_agent_applies_a_pending_file_once_its_id_matches(tmp_path):
    reply, vm_repo = _push_pending(tmp_path, lambda s, oid: s.conn.send({"ids": {"a.bin": oid}}))
    assert reply["ok"] is True, reply
    assert (vm_repo.path / "a.bin").read_bytes() == big_bytes(b"pending bytes\n")
    assert reply["overlay"]["files"]["a.bin"] == ["100644", git_blob_id(big_bytes(b"pending bytes\n"))]


@pytest.mark.parametrize("ids, code", [
    ({"a.bin": git_blob_id(b"other bytes")}, "corrupt"),          # not the bytes that came
    ({"a.bin": "0" * 40}, "corrupt"),                             # the placeholder itself
    ({"b.bin": git_blob_id(b"x")}, "bad-request"),                # another path
    ({}, "bad-request"),                                          # none
    ({"a.bin": "A" * 40}, "bad-request"),                         # not an id
    ({"a.bin": "a" * 64}, "bad-request"),                         # a sha256 id in a sha1 repository
])
def test_agent_applies_nothing_for_a_wrong_or_missing_id(tmp_path, ids, code):
    reply, vm_repo = _push_pending(tmp_path, lambda s, oid: s.conn.send({"ids": ids}))
    assert reply["ok"] is False and reply["error"]["code"] == code, reply
    assert not (vm_repo.path / "a.bin").exists() and vm_repo.status() == ""


def test_agent_drops_a_push_the_host_abandons_after_its_stream(tmp_path):
    reply, vm_repo = _push_pending(tmp_path, lambda s, oid: s.conn.send({"abort": "a file changed"}))
    assert reply["ok"] is False and reply["error"]["code"] == "aborted", reply
    assert "a file changed" in reply["error"]["message"]
    assert not (vm_repo.path / "a.bin").exists() and vm_repo.status() == ""


@pytest.mark.parametrize("pending, tar", [(["nope.bin"], True), (["a.bin", "a.bin"], True), ("a.bin", True),
                                          (["a.bin"], False)])
def test_agent_refuses_a_pending_list_that_is_not_the_streams_files(tmp_path, pending, tar):
    reply, vm_repo = _push_pending(tmp_path, lambda s, oid: None, pending=pending, tar=tar)
    assert reply["ok"] is False and reply["error"]["code"] == "bad-request", reply
    assert not (vm_repo.path / "a.bin").exists()


def test_an_agent_whose_caps_are_not_a_list_is_sent_no_pending_ids(launched):
    """`caps` must be a list: a string that merely holds "later-ids" promises nothing, and the
    host hashes a large file before the push, as for an agent without the capability."""
    from hostile_agent import install
    repo, vm = launched
    directory = install(repo, vm, {"name": "caps-as-string"})
    data = big_bytes(b"sent to an agent with odd caps\n")
    (repo.path / "big.bin").write_bytes(data)
    repo.slicer("push", vm)
    assert json.loads((directory / "push-request.json").read_text()) == {"pending": None}
    assert repo.vm_sh(vm, "git hash-object big.bin").strip() == git_blob_id(data)


def test_stop_ends_the_hash_thread_of_a_push_that_failed(tmp_path):
    """A push that fails before it waits for its ids leaves no thread behind (push.py calls
    stop in a finally)."""
    import threading
    path = tmp_path / "big.bin"
    path.write_bytes(big_bytes(b"never waited for\n"))
    later = LaterIds("sha1", lambda p: True)                  # eager: it starts at once
    later.attach(overlay_mod.StatCache(), str(tmp_path / "cache.json"))
    later.entry(str(path), "big.bin")

    def hashing():
        return [t for t in threading.enumerate() if "_hash_all" in t.name]
    assert hashing()
    later.stop()
    assert not hashing()
