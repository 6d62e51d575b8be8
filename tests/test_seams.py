"""The seams between modules (docs/architecture.md): every provider and every channel implements
its whole interface, so no caller has to probe for what it may call. (That every command gets
the same limits, deadline and state validation from `open_session` is tested in
test_security_frames.py.)"""

import importlib
import inspect
import os
import pkgutil
import re

import pytest

from git_slicer import providers, transport
from git_slicer.config import Settings
from git_slicer.errors import UsageError
from git_slicer.providers import AlwaysRunning, NoEgress, Provider
from git_slicer.providers.registry import get_provider
from git_slicer.providers.address import AddressProvider, SSHProvider
from git_slicer.providers.local import LocalProvider
from git_slicer.providers.local_agent import WarmChannel
from git_slicer.providers.qemu import QemuProvider, SerialChannel
from git_slicer.providers.slicer import ForwardChannel, SlicerProvider


def _methods(protocol) -> set:
    return {name for name, value in vars(protocol).items() if inspect.isfunction(value) and not name.startswith("_")}


def _provider_classes() -> list:
    """Every provider class in git_slicer/providers/: a class whose `name` is a provider's."""
    found = {}
    for info in pkgutil.iter_modules(providers.__path__):
        module = importlib.import_module("git_slicer.providers." + info.name)
        for cls in vars(module).values():
            if inspect.isclass(cls) and cls.__module__ == module.__name__ and isinstance(getattr(cls, "name", None), str) \
                    and cls.name:
                found[cls.__name__] = cls
    return [found[name] for name in sorted(found)]


def test_every_provider_class_is_checked():
    names = sorted(cls.name for cls in _provider_classes())
    assert names == ["address", "local", "qemu", "slicer", "ssh"]
    with pytest.raises(UsageError) as known:            # and they are the ones get_provider knows
        get_provider("none", Settings())
    assert sorted(re.search(r"known: ([a-z, ]+)", str(known.value)).group(1).split(", ")) == names


@pytest.mark.parametrize("cls", _provider_classes(), ids=lambda cls: cls.name)
def test_every_provider_implements_the_whole_provider_interface(cls):
    missing = [name for name in sorted(_methods(Provider)) if getattr(cls, name, None) is getattr(Provider, name)
               or not callable(getattr(cls, name, None))]
    assert not missing, "%s lacks %s" % (cls.__name__, missing)
    # Each capability is stated by the class itself, not inherited by accident (no caller probes).
    undeclared = [name for name, kind in sorted(Provider.__annotations__.items())
                  if not isinstance(vars(cls).get(name), {"str": str, "bool": bool}[kind])]
    assert not undeclared, "%s does not declare %s" % (cls.__name__, undeclared)
    assert cls.name
    if cls.passes_env:                                  # `exec --env` hands them to exec
        assert "env" in inspect.signature(cls.exec).parameters
    if cls.supports_egress:
        assert "allow" in inspect.signature(cls.launch).parameters
        assert NoEgress not in cls.__mro__
    else:
        with pytest.raises(UsageError, match=r"^provider %s cannot enforce an egress allowlist \(--allow\)"
                           % cls.name):
            cls.set_egress(cls.__new__(cls), "x", [])
        with pytest.raises(UsageError, match="cannot enforce an egress allowlist"):
            cls.egress_log(cls.__new__(cls), "x")


@pytest.mark.parametrize("cls", [AddressProvider, SSHProvider, SlicerProvider])
def test_providers_without_stop_say_so(cls):
    assert issubclass(cls, AlwaysRunning)
    with pytest.raises(Exception, match=re.escape("provider %s cannot stop VMs" % cls.name)):
        AlwaysRunning.stop(cls.__new__(cls), "x")


@pytest.mark.parametrize("cls", [transport.ProcessChannel, transport.SocketChannel, WarmChannel, SerialChannel,
                                 ForwardChannel])
def test_every_channel_implements_the_whole_channel_interface(cls):
    missing = [name for name in sorted(_methods(transport.Channel)) if not callable(getattr(cls, name, None))
               or getattr(cls, name) is getattr(transport.Channel, name)]
    assert not missing, "%s lacks %s" % (cls.__name__, missing)


def test_write_atomic_replaces_whole_or_not_at_all(tmp_path):
    from git_slicer.wire.files import write_atomic
    path = str(tmp_path / "sub" / "f.json")
    write_atomic(path, b"old")                              # makes the directory
    assert open(path, "rb").read() == b"old" and os.stat(path).st_mode & 0o777 == 0o600
    with pytest.raises(TypeError):
        write_atomic(path, "not bytes")                     # fails mid-write
    assert open(path, "rb").read() == b"old" and os.listdir(tmp_path / "sub") == ["f.json"]
    write_atomic(path, b"new", mode=0o755, durable=False, sync_dir=True)
    assert open(path, "rb").read() == b"new" and os.stat(path).st_mode & 0o777 == 0o755


def test_one_timestamp_format():
    from git_slicer.wire.files import utc_now
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", utc_now())
    assert re.fullmatch(r"\d{8}T\d{6}Z", utc_now(compact=True))


def test_one_object_id_check_and_one_set_of_modes():
    from git_slicer.wire.gitobj import ENTRY_MODES, MODE_TREE, is_oid, mode_bits
    assert is_oid("a" * 40) and is_oid("0123456789abcdef" * 4)
    assert not any(is_oid(v) for v in ("A" * 40, "a" * 39, "a" * 41, "g" * 40, None, 40 * b"a", ["a" * 40]))
    assert ENTRY_MODES == {"100644", "100755", "120000", "160000"} and mode_bits(MODE_TREE) == 0o040000


def test_relay_copies_both_ways_half_closing_and_counts():
    import socket
    import threading
    from git_slicer.wire.relay import relay
    client, client_end = socket.socketpair()
    upstream_end, upstream = socket.socketpair()
    counts = []
    worker = threading.Thread(target=lambda: counts.append(relay(client_end, upstream_end)))
    worker.start()

    def read_all(sock):
        data = b""
        while True:
            block = sock.recv(4096)
            if not block:
                return data
            data += block
    client.sendall(b"hello")
    client.shutdown(socket.SHUT_WR)
    assert read_all(upstream) == b"hello"          # EOF arrives: the relay half-closed upstream
    upstream.sendall(b"world!")
    upstream.shutdown(socket.SHUT_WR)
    assert read_all(client) == b"world!"
    worker.join(10)
    assert counts == [(5, 6)]
    for sock in (client, client_end, upstream_end, upstream):
        sock.close()


def test_an_overlay_entry_is_its_json_list_read_by_name():
    import json
    from git_slicer.wire.gitobj import Entry
    from git_slicer.wire.overlay import decoded
    entry = Entry("100644", "b" * 40)
    assert (entry.mode, entry.oid) == ("100644", "b" * 40)
    assert json.dumps(entry) == '["100644", "%s"]' % ("b" * 40)          # the wire form is unchanged
    assert entry == json.loads(json.dumps(entry)) and json.loads(json.dumps(entry)) == entry
    assert entry != ["100755", "b" * 40] and Entry.of(None) is None
    back = decoded({"index": {"a": ["100755", "c" * 40], "gone": None}, "files": {"b": ["120000", "d" * 40]}})
    assert isinstance(back["index"]["a"], Entry) and back["index"]["a"].mode == "100755"
    assert back["index"]["gone"] is None and back["files"]["b"].oid == "d" * 40
    for bad in ("100644", ["100644"], ["100644", "b" * 40, "x"], {"mode": "100644"}):
        with pytest.raises(ValueError):
            Entry.of(bad)


def test_the_host_overlay_equals_the_vms_after_the_json_round_trip(launched):
    """Both sides scan with wire/overlay.py; the VM's arrives as JSON and is validated into
    Entries. An Entry equals the plain list JSON gives, so "the VM has what the host has" is one
    comparison, whichever side's entries are decoded."""
    import json
    from git_slicer.config import Settings
    from git_slicer.repo import Worktree
    from git_slicer.scan import host_overlay
    from git_slicer.target import resolve
    from git_slicer.wire.gitobj import Entry
    repo, vm = launched
    repo.write("src/app.py", "print('changed')\n")
    repo.write("staged.txt", "staged\n")
    repo.git("add", "staged.txt")
    repo.write("run.sh", "#!/bin/sh\n", mode=0o755)
    os.symlink("README.md", repo.path / "readme-link")
    os.unlink(repo.path / "src" / "lib.py")
    repo.slicer("push", vm)
    worktree = Worktree(str(repo.path))
    ours = host_overlay(worktree)
    target = resolve(Settings(worktree.root), vm, worktree=worktree, require_link=True)
    with target.session() as session:
        theirs = session.state(target.link.guest_path)["overlay"]
    entries = [e for o in (ours, theirs) for part in o.values() for e in part.values() if e is not None]
    assert len(entries) == 8 and all(isinstance(e, Entry) for e in entries)
    assert {e.mode for e in entries} == {"100644", "100755", "120000"}
    assert theirs == ours
    assert json.loads(json.dumps(ours)) == theirs and ours == json.loads(json.dumps(theirs))
    assert ours["files"]["src/lib.py"] is None
    assert theirs["index"]["staged.txt"].oid == repo.git("hash-object", "staged.txt").strip()
