"""HOSTILE AGENT - a test double that plays a compromised VM.

It runs inside the local sandbox in place of the real guest agent (the tests point
`slicer.local.python` at a wrapper script that starts this file). It is the real agent
(git_slicer.agent.server.Agent) for everything the scenario does not override, and speaks
protocol v1 with crafted, malicious answers where it does. The scenario is a JSON file next to
this one, written by the test: {"name": ..., ...parameters}.

Stdlib only, like the real agent.
"""

import base64
import hashlib
import json
import os
import sys
import time

from git_slicer.agent.server import Agent
from git_slicer.wire import tarstream
from git_slicer.wire.framing import HEADER, Connection

HERE = os.path.dirname(os.path.abspath(__file__))


def raw_member(name, typeflag=b"0", data=b"", link=b"", mode=0o644, size=None):
    """One tar member with any name/type/mode, pax records for long or non-ASCII names."""
    name = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else name
    link = link.encode("utf-8", "surrogateescape") if isinstance(link, str) else link
    size = len(data) if size is None else size
    records = b""
    if len(name) > 100 or not name.isascii():
        records += tarstream._pax_record("path", name)
        name = b"pax-long-name"
    if len(link) > 100 or not link.isascii():
        records += tarstream._pax_record("linkpath", link)
        link = b"pax-long-link"
    head = b""
    if records:
        head = tarstream._header(b"pax-header", 0o644, len(records), b"x") + records + tarstream.padding(len(records))
    return head + tarstream._header(name, mode, size, typeflag, link) + data + tarstream.padding(len(data))


def build_tar(spec):
    """spec: list of dicts {name, type ('0','2','5','1','3','4','6'), data (text), link, mode, size}."""
    out = b""
    for m in spec:
        out += raw_member(m["name"], m.get("type", "0").encode(), m.get("data", "").encode(),
                          m.get("link", ""), m.get("mode", 0o644), m.get("size"))
    return out + tarstream.end_of_archive()


def oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HostileAgent(Agent):
    def __init__(self, conn, scenario):
        super().__init__(conn)
        self.s = scenario
        self.name = scenario["name"]

    def raw(self, data: bytes):
        self.conn._w.write(data)
        self.conn.flush()

    def op_hello(self, request):
        reply = super().op_hello(request)
        if self.name == "hello-escapes":            # terminal escapes where -v prints the hello
            reply.update(version="\x1b]0;pwned\x07\x1b[2J1.0", git="git\nversion \x1b[31m2", python="\r3")
        if self.name == "caps-as-string":           # a string that holds every capability's name
            reply["caps"] = " ".join(reply["caps"])
        return reply

    def op_state(self, request):
        reply = super().op_state(request)
        if self.name == "raw-state":                 # frame-level attacks instead of a state
            mode = self.s["mode"]
            if mode == "oversized":
                self.raw(HEADER.pack(b"J", 1 << 30) + b"{" * 1000)
            elif mode == "truncated":
                self.raw(HEADER.pack(b"J", 5000) + b'{"ok": true')
            elif mode == "flood":
                try:
                    while True:
                        self.conn.write_frame(b"D", b"x" * 65536)
                except OSError:
                    pass
            elif mode == "bad-type":
                self.raw(HEADER.pack(b"Q", 2) + b"{}")
            elif mode == "silent":
                time.sleep(120)
            elif mode == "escape":
                self.conn.send({"ok": False, "error": {"code": "x", "message": "\x1b[2J\x1b]0;pwned\x07owned\nline"}})
            elif mode == "deep":                    # json.loads would recurse until RecursionError
                self.conn.write_frame(b"J", b"[" * 200000 + b"]" * 200000)
                self.conn.flush()
            elif mode == "not-json":
                self.conn.write_frame(b"J", b"\xff\xfe not json")
                self.conn.flush()
            sys.exit(0)
        for key, value in self.s.get("state", {}).items():
            if key == "overlay_files":
                reply["overlay"]["files"].update(value)
            elif key == "overlay_index":
                reply["overlay"]["index"].update(value)
            elif key == "branches":
                reply["branches"].update(value)
            elif key == "set_branches":
                reply["branches"] = value
            else:
                reply[key] = value
        if self.s.get("announce_tar"):               # announce every regular member of the tar
            for m in self.s["tar"]:
                if m.get("announce"):
                    reply["overlay"]["files"][m["announce"]] = [m.get("announce_mode", "100644"),
                                                                oid(m.get("data", "").encode())]
        return reply

    def op_files(self, request):
        if self.name == "pause-files":              # hold the pull until the test says go
            open(os.path.join(HERE, "paused"), "w").close()
            while not os.path.exists(os.path.join(HERE, "go")):
                time.sleep(0.05)
            return super().op_files(request)
        if "tar" not in self.s:
            return super().op_files(request)
        self.conn.send({"ok": True, "streaming": True})
        data = build_tar(self.s["tar"]) if isinstance(self.s["tar"], list) else base64.b64decode(self.s["tar"])
        if self.s.get("tar_stream") == "endless":     # 10M entries: never stops on its own
            try:
                self.conn.send_stream(_endless_dirs())
            except OSError:
                pass
            return None
        self.conn.send_stream([data])
        return {"ok": True}

    def op_push(self, request, current=None):
        if self.name == "caps-as-string":           # what the host asked of an agent with no valid caps
            with open(os.path.join(HERE, "push-request.json"), "w") as fh:
                json.dump({"pending": request.get("pending")}, fh)
        if self.name == "pause-push":               # hold the push after the host's scan, before its streams
            open(os.path.join(HERE, "paused"), "w").close()
            while not os.path.exists(os.path.join(HERE, "go")):
                time.sleep(0.05)
        return super().op_push(request, current)

    def op_fetch(self, request):
        if self.name == "pause-fetch":              # hold the pull before its objects arrive
            open(os.path.join(HERE, "paused"), "w").close()
            while not os.path.exists(os.path.join(HERE, "go")):
                time.sleep(0.05)
            return super().op_fetch(request)
        if "pack" not in self.s and "pack_file" not in self.s and "pack_stream" not in self.s:
            return super().op_fetch(request)
        self.conn.send({"ok": True, "streaming": True})
        if self.s.get("pack_stream") == "bad-length":
            self.conn.write_frame(b"D", b"PACK\0\0\0\2\0\0\0\1")
            self.conn.write_frame(b"Z", json.dumps({"bytes": 13}).encode())
            self.conn.flush()
            return {"ok": True}
        if self.s.get("pack_stream") == "endless":
            def chunks():                   # one 4 GiB blob, stored uncompressed: it never ends
                import zlib
                yield b"PACK\0\0\0\2\0\0\0\1" + bytes([0x80 | (3 << 4), 0x80, 0x80, 0x80, 0x80, 0x01])
                z = zlib.compressobj(0)
                while True:
                    yield z.compress(b"\0" * 65536) + z.flush(zlib.Z_SYNC_FLUSH)
            try:
                self.conn.send_stream(chunks())
            except OSError:
                pass
            return None
        if "pack_file" in self.s:
            with open(os.path.join(HERE, self.s["pack_file"]), "rb") as fh:
                data = fh.read()
        else:
            data = base64.b64decode(self.s["pack"])
        self.conn.send_stream([data])
        return {"ok": True}


def _endless_dirs():
    i = 0
    while True:
        block = b"".join(raw_member("d%d" % (i + k), b"5") for k in range(64))
        i += 64
        yield block


def load_scenario():
    with open(os.path.join(HERE, "scenario.json")) as fh:
        return json.load(fh)


def main(argv):
    """Serve stdio, or (`--listen ADDR --idle S`, as the local VM starts its warm agent) the
    real agent's listener with a hostile agent behind each connection."""
    if "--listen" in argv:
        from git_slicer.agent.listen import serve
        idle = float(argv[argv.index("--idle") + 1]) if "--idle" in argv else 0
        return serve(argv[argv.index("--listen") + 1], idle=idle,
                     agent=lambda conn: HostileAgent(conn, load_scenario()))
    conn = Connection(sys.stdin.buffer, sys.stdout.buffer)
    sys.stdout = sys.stderr
    return HostileAgent(conn, load_scenario()).serve()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


# ------------------------------------------------------------------ host side (used by the tests)
def vm_home(vm):
    """The host directory that is the VM's disk (its $HOME)."""
    from pathlib import Path
    return Path(os.environ["XDG_DATA_HOME"]) / "git-slicer" / "vms" / vm / "home"


def guest_home(vm) -> str:
    """The VM's home as the agent inside it sees it."""
    return _guest(vm)[0]


def _guest(vm):
    """(guest path of the VM's home, python inside the VM)."""
    with open(vm_home(vm).parent / "vm.json") as fh:
        sandbox = json.load(fh).get("sandbox")
    if sandbox == "bwrap":
        return "/home/agent", "/usr/bin/python3"
    return str(vm_home(vm)), os.path.realpath(sys.executable)


def install(repo, vm, scenario=None, env=None):
    """Make the next connections to `vm` start the hostile agent with `scenario`, or (scenario
    None) the real agent with extra environment `env` (e.g. GIT_SLICER_TEST_CRASH_AT).
    Done through the `slicer.local.python` config key, so the agent still runs in the sandbox."""
    import shutil
    home, python = _guest(vm)
    directory = vm_home(vm) / ".hostile"
    directory.mkdir(exist_ok=True)
    shutil.copy(__file__, directory / "hostile_agent.py")
    (directory / "scenario.json").write_text(json.dumps(scenario or {"name": "none"}))
    exports = "".join("export %s='%s'\n" % (k, v) for k, v in (env or {}).items())
    if scenario is None:
        body = 'exec %s "$@"\n' % python
    else:
        body = 'exec %s %s/.hostile/hostile_agent.py "$@"\n' % (python, home)
    # A new wrapper name each time: the VM's warm agent runs another python, so it is replaced.
    run = directory / ("run-%d" % len(list(directory.glob("run-*"))))
    run.write_text("#!/bin/sh\n" + exports + body)
    run.chmod(0o755)
    repo.git("config", "slicer.local.python", "%s/.hostile/%s" % (home, run.name))
    return directory


def uninstall(repo):
    repo.git("config", "--unset", "slicer.local.python")


def run_paused(repo, vm, scenario: str, argv, while_paused):
    """Run `git slicer ARGV` (in its own process) against the hostile agent `scenario`, which
    pauses; call `while_paused()` during the pause, let it go on, and return (the finished
    process, its stderr)."""
    import subprocess
    import sys
    import time
    directory = install(repo, vm, {"name": scenario})
    proc = subprocess.Popen([sys.executable, "-m", "git_slicer", *argv], cwd=repo.path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (directory / "paused").exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else ""
        time.sleep(0.05)
    while_paused()
    (directory / "go").touch()
    _, err = proc.communicate(timeout=60)
    return proc, err
