"""What recovery keeps of the VM's work (agent/kept.py), byte for byte, in a real repository:
names git's line-reading options would misread, a symlink, an executable, a file larger than
a read buffer; each save a ref of its own; the record lasts until the VM deletes the refs.
(End to end, with a push killed in the VM: tests/test_security_crash.py.)"""

import os
import subprocess

import pytest

from git_slicer.agent import kept
from git_slicer.agent.server import Repo

NAMES = ["plain.txt", "a\nb.txt", '"quoted.txt', "tail\r", "dir/run.sh", "big.bin"]


def git(root, *args, input=None) -> bytes:
    return subprocess.run(["git", *args], cwd=root, input=input, check=True, stdout=subprocess.PIPE).stdout


@pytest.mark.parametrize("object_format", ["sha1", "sha256"])
def test_kept_tree_holds_every_byte_and_mode(tmp_path, object_format):
    root = tmp_path / "vm-repo"
    git(tmp_path, "init", "-q", "--object-format=" + object_format, str(root))
    data = {name: ("content of %r\n" % name).encode() for name in NAMES}
    data["big.bin"] = os.urandom(3 << 20)
    (root / "dir").mkdir()
    for name, content in data.items():
        (root / name).write_bytes(content)
    (root / "dir" / "run.sh").chmod(0o755)
    os.symlink("plain.txt", root / "link")
    (root / ".gitattributes").write_text("* text=auto eol=crlf\n")   # kept bytes are raw, never converted
    repo = Repo(str(root))
    entry = kept.save(repo, "push/../id 1", NAMES + ["link", "gone.txt"], str(tmp_path / "scratch-index"))
    assert entry == {"ref": "refs/slicer/kept/pushid1", "paths": NAMES + ["link"]}
    listing = git(root, "ls-tree", "-r", "-z", entry["ref"]).split(b"\0")
    modes = {os.fsdecode(line.split(b"\t", 1)[1]): line.split(b" ")[0].decode() for line in listing if line}
    assert modes == {**{n: "100644" for n in NAMES}, "dir/run.sh": "100755", "link": "120000"}
    for name, content in data.items():
        assert git(root, "cat-file", "blob", "%s:%s" % (entry["ref"], name)) == content, repr(name)
    assert git(root, "cat-file", "blob", entry["ref"] + ":link") == b"plain.txt"
    assert not (tmp_path / "scratch-index").exists()
    # A second save (the same push interrupted again) never replaces the first.
    second = kept.save(repo, "push/../id 1", ["plain.txt"], str(tmp_path / "scratch-index"))
    assert second["ref"] == "refs/slicer/kept/pushid1-2"
    assert [e["ref"] for e in kept.listed(repo)] == [entry["ref"], second["ref"]]
    git(root, "update-ref", "-d", entry["ref"])
    assert kept.listed(repo) == [second]
    git(root, "update-ref", "-d", second["ref"])
    assert kept.listed(repo) is None and not (root / ".git" / kept.RECORD).exists()
