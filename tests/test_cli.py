"""The command line: exit codes, --json shapes, exec, status, list, vm, and the sandbox itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import HAVE_BWRAP, slicer


def test_help_version_and_usage_errors(tmp_path):
    for flag in ("-h", "--help"):
        out = slicer(tmp_path, flag).stdout.decode()
        for name in ("push", "pull", "list", "status", "exec", "vm", "agent"):
            assert name in out
    assert b"Usage:" in slicer(tmp_path, "push", "-h").stdout
    assert slicer(tmp_path, "--version").stdout.decode().startswith("git-slicer ")
    proc = slicer(tmp_path, "push", "--no-such-flag", check=False)
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr
    proc = slicer(tmp_path, "exec", check=False)                   # CMD is required
    assert proc.returncode == 2 and b"no command given" in proc.stderr


def test_git_finds_the_extension(repo):
    assert "git-slicer" in repo.git("slicer", "--version")


def test_exec_passes_stdout_stderr_and_exit_code(launched):
    repo, vm = launched
    proc = repo.slicer("exec", vm, "--", "sh", "-c", "echo out; echo err >&2; exit 7", check=False)
    assert proc.returncode == 7
    assert proc.stdout == b"out\n" and proc.stderr == b"err\n"
    assert repo.slicer("exec", vm, "--", "pwd").stdout.decode().strip().endswith("/project")
    assert repo.slicer("exec", vm, "--cwd", "src", "--", "ls").stdout.decode().split() == ["app.py", "lib.py"]
    proc = repo.slicer("exec", vm, "--", "sh", "-c", "cat", input=b"piped\n")
    assert proc.stdout == b"piped\n"


def test_status_reports_both_sides(launched):
    repo, vm = launched
    assert repo.slicer_json("status")["in_sync"] is True
    repo.write("host.txt", "h\n")
    repo.vm_sh(vm, "echo v > v.txt && git add v.txt && git commit -qm v && echo d > dirty.txt")
    result = repo.slicer_json("status", vm)
    assert result["in_sync"] is False
    assert result["host"]["changed_since_sync"] == ["host.txt"]
    assert result["vm_side"]["ahead"] == 1 and result["vm_side"]["dirty"] == ["dirty.txt"]
    text = repo.slicer("status").stdout.decode()
    assert "1 new commit(s)" in text and "host.txt" in text


def test_list_marks_current_worktree_and_json_shape(launched, tmp_path):
    repo, vm = launched
    rows = repo.slicer_json("list")
    assert rows == [dict(rows[0], worktree=str(repo.path), branch="main", vm=vm, current=True)]
    text = repo.slicer("list").stdout.decode()
    assert text.startswith("* ") and vm in text


def test_vm_launch_list_rm(tmp_path):
    first = json.loads(slicer(tmp_path, "vm", "launch", "--json").stdout)
    named = json.loads(slicer(tmp_path, "vm", "launch", "box", "--json").stdout)
    assert first["name"] == "vm-1" and named["name"] == "box"
    assert json.loads(slicer(tmp_path, "vm", "launch", "--json").stdout)["name"] == "vm-2"
    names = [v["name"] for v in json.loads(slicer(tmp_path, "vm", "list", "--json").stdout)]
    assert names == ["box", "vm-1", "vm-2"]
    assert slicer(tmp_path, "vm", "launch", "box", check=False).returncode == 2
    slicer(tmp_path, "vm", "rm", "vm-1", "box")
    names = [v["name"] for v in json.loads(slicer(tmp_path, "vm", "list", "--json").stdout)]
    assert names == ["vm-2"]
    proc = slicer(tmp_path, "vm", "rm", "vm-1", check=False)
    assert proc.returncode == 1 and b"does not exist" in proc.stderr
    assert slicer(tmp_path, "vm", "launch", "../evil", check=False).returncode == 2
    # `backup` would share refs/slicer/backup/ with pull --force's backups
    assert slicer(tmp_path, "vm", "launch", "backup", check=False).returncode == 2


def test_vm_dir_is_configurable(tmp_path):
    target = tmp_path / "vms"
    env = dict(os.environ, GIT_SLICER_VM_DIR=str(target))
    slicer(tmp_path, "vm", "launch", "x", env=env)
    assert (target / "x" / "vm.json").exists()


def test_agent_speaks_protocol_on_stdio(tmp_path):
    from git_slicer.wire.framing import Connection
    proc = subprocess.Popen([sys.executable, "-m", "git_slicer", "agent", "--stdio"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, cwd=tmp_path)
    conn = Connection(proc.stdout, proc.stdin)
    conn.send({"op": "hello", "protocol": 1})
    reply = conn.recv_reply()
    assert reply["agent"] == "git-slicer-agent" and reply["protocol"] == 1 and "pack" in reply["caps"]
    conn.send({"op": "hello", "protocol": 99})
    assert conn.recv()["error"]["code"] == "version"
    conn.send({"op": "state", "path": str(tmp_path / "none")})
    assert conn.recv_reply()["exists"] is False
    conn.send({"op": "bye"})
    conn.recv_reply()
    assert proc.wait(10) == 0


def test_agent_refuses_malformed_requests_in_one_line_and_serves_on(tmp_path):
    """The host is trusted, but a confused one (a bug of ours, another version) gets a
    `bad-request` naming what is wrong, never an internal error, and the agent serves on."""
    from git_slicer.wire.framing import Connection
    subprocess.run(["git", "init", "-q", str(tmp_path / "r")], check=True)
    proc = subprocess.Popen([sys.executable, "-m", "git_slicer", "agent", "--stdio"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    conn = Connection(proc.stdout, proc.stdin)
    conn.send({"op": "hello", "protocol": 1})
    conn.recv_reply()
    push = {"op": "push", "path": str(tmp_path / "r"), "branch": "main", "commit": "1" * 40,
            "overlay": {"index": {}, "files": {}}}
    malformed = {
        "missing 'branch'": {k: v for k, v in push.items() if k != "branch"},
        "missing 'commit'": {k: v for k, v in push.items() if k != "commit"},
        "missing 'path'": {k: v for k, v in push.items() if k != "path"},
        "TypeError": {**push, "path": 5},
        "AttributeError": {**push, "config": ["user.name"]},
        "the new overlay": {**push, "overlay": {"index": {"a": "not an entry"}, "files": {}}},
        "invalid branch name": {**push, "branch": "a..b"},
        "unknown object format": {**push, "object_format": "md5"},
        "state: malformed request (missing 'path')": {"op": "state"},
        "fetch: malformed request (missing 'path')": {"op": "fetch"},
    }
    for expect, request in malformed.items():
        conn.send(request)
        error = conn.recv()["error"]
        assert error["code"] == "bad-request" and expect in error["message"], (expect, error)
    conn.send({"op": "state", "path": str(tmp_path / "r")})
    assert conn.recv_reply()["exists"] is True
    conn.send({"op": "bye"})
    conn.recv_reply()
    assert proc.wait(10) == 0
    err = proc.stderr.read().decode()
    assert "internal error" not in err and "Traceback" not in err, err


@pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap not installed")
def test_sandbox_hides_host_and_network(launched, tmp_path):
    repo, vm = launched
    script = ("test -e %s && echo host-visible; "
              "test -w /usr && echo usr-writable; "
              "python3 -c 'import socket; s=socket.socket(); s.settimeout(1); s.connect((\"127.0.0.1\", 22))' "
              "2>/dev/null && echo network; "
              "touch /etc/x 2>/dev/null && echo etc-writable; "
              "touch ~/ok && echo home-writable; id -u" % repo.path)
    out = repo.vm_sh(vm, script)
    assert out.split() == ["home-writable", "1000"]


def test_unsandboxed_mode_warns(tmp_path, repo):
    env = dict(os.environ, GIT_SLICER_SANDBOX="none")
    proc = repo.slicer("push", "--launch", env=env)
    assert b"UNSANDBOXED" in proc.stderr
    vm = repo.slicer_json("list")[0]["vm"]
    assert repo.slicer("exec", vm, "--", "git", "status", "--porcelain", env=env).stdout == b""


def test_errors_are_one_line_without_traceback(tmp_path, repo):
    for args in (("pull", "x/y"), ("exec", "nope", "--", "true"), ("status",), ("vm", "rm", "nope")):
        proc = repo.slicer(*args, check=False)
        assert proc.returncode in (1, 2), args
        assert b"Traceback" not in proc.stderr
        assert proc.stderr.startswith(b"error: ") or proc.stderr.startswith(b"Usage"), (args, proc.stderr)


def test_status_when_the_vm_lost_its_repository(launched):
    repo, vm = launched
    repo.vm_sh(vm, "rm -rf ~/project")
    result = repo.slicer_json("status")
    assert result["vm_side"]["exists"] is False and result["in_sync"] is False
    assert "creates it again" in repo.slicer("status").stdout.decode()
    repo.slicer("push")
    assert repo.slicer_json("status")["in_sync"] is True


def test_quiet_verbose_and_forced_progress(launched):
    repo, vm = launched
    repo.write("data.bin", os.urandom(1 << 20))
    quiet = repo.slicer("push", "-q")
    assert quiet.stdout == b"" and quiet.stderr == b""
    repo.write("data.bin", os.urandom(1 << 20))
    verbose = repo.slicer("push", "-v").stderr.decode()
    assert "VM %s (local" % vm in verbose and "answered in" in verbose and "sent a" in verbose
    repo.write("data.bin", os.urandom(1 << 20))
    repo.git("config", "slicer.progress", "always")     # forced although stderr is a pipe here
    forced = repo.slicer("push").stderr.decode()
    assert "VM %s:" % vm in forced and "B" in forced
    repo.git("config", "slicer.progress", "never")
    repo.write("data.bin", os.urandom(1 << 20))
    assert repo.slicer("push").stderr == b""


def test_guest_path_settings(repo):
    repo.git("config", "slicer.guestPath", "~/work/elsewhere")
    vm = repo.slicer_json("push", "--launch")["vm"]
    assert repo.slicer_json("list")[0]["guest_path"].endswith("/work/elsewhere")
    assert repo.vm_status(vm) == repo.status()
    other = repo.slicer_json("vm", "launch")["name"]
    repo.git("config", "slicer.%s.guestPath" % other, "~/per-vm")   # per-VM beats the global one
    assert repo.slicer_json("push", other)["guest_path"].endswith("/per-vm")
