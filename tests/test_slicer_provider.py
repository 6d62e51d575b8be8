"""The Slicer provider against a STRICT double of the Slicer REST API (tests/slicer_api_double.py):
a real HTTP server on a unix socket (no token) and on 127.0.0.1 (bearer token), half-duplex exec,
text mode that mangles bytes, background exec, cp, a real /forward WebSocket and a PTY /shell.
The double's "VMs" are directories whose python3 cannot import git_slicer, so the agent must be
shipped (with cp) and started (with a background exec)."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from slicer_api_double import SlicerAPIStrictDouble

from git_slicer import autopush


def _double(tmp_path, monkeypatch, kind="unix", **kwargs):
    top = tempfile.mkdtemp(prefix="gs-", dir="/tmp")       # short: unix socket paths live inside
    root = os.path.join(top, "vms")
    os.mkdir(root)
    if kind == "unix":
        double = SlicerAPIStrictDouble(root, unix_path=top + "/slicer.sock", **kwargs).start()
    else:
        double = SlicerAPIStrictDouble(root, token="api-token-123", **kwargs).start()
        token_file = tmp_path / "slicer-token"
        token_file.write_text("api-token-123\n")
        monkeypatch.setenv("SLICER_TOKEN_FILE", str(token_file))
    double.top = top
    monkeypatch.setenv("SLICER_URL", double.url)
    monkeypatch.setenv("GIT_SLICER_PROVIDER", "slicer")
    monkeypatch.delenv("SLICER_TOKEN", raising=False)
    return double


@pytest.fixture(params=["unix", "tcp"])
def api(request, tmp_path, monkeypatch):
    double = _double(tmp_path, monkeypatch, request.param)
    yield double
    double.stop()
    shutil.rmtree(double.top, ignore_errors=True)


@pytest.fixture
def unix_api(tmp_path, monkeypatch):
    double = _double(tmp_path, monkeypatch)
    yield double
    double.stop()
    shutil.rmtree(double.top, ignore_errors=True)


def _exec_queries(api, hostname):
    return api.queries("POST", "/vm/%s/exec" % hostname)


def test_launch_list_exec_rm(repo, api):
    vm = repo.slicer_json("vm", "launch")
    assert vm["provider"] == "slicer" and vm["name"] == "agents-1" and vm["hostgroup"] == "agents"
    named = repo.slicer_json("vm", "launch", "reviewer", "--tag", "team=infra")
    assert named["name"] == "reviewer" and named["hostname"] == "agents-2"
    assert "team=infra" in api.state.nodes["agents-2"]["tags"]
    listed = {v["name"]: v for v in repo.slicer_json("vm", "list")}
    assert set(listed) == {"agents-1", "reviewer"} and listed["reviewer"]["tags"]["name"] == "reviewer"
    proc = repo.slicer("exec", "reviewer", "--cwd", ".", "--", "sh", "-c", "echo out; echo err >&2; exit 7", check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, b"out\n", b"err\n")
    proc = repo.slicer("exec", "agents-1", "--cwd", ".", "--", "cat", input=b"\x00binary\xff")
    assert proc.stdout == b"\x00binary\xff"
    query = _exec_queries(api, "agents-1")[-1]
    assert query["uid"] == ["1000"] and query["gid"] == ["1000"] and query["stdio"] == ["base64"]
    assert query["shell"] == [""] and query["stdin"] == ["true"]
    assert repo.slicer_json("vm", "rm", "reviewer") == {"removed": ["reviewer"], "retired_links": [], "ok": True}
    assert [v["name"] for v in repo.slicer_json("vm", "list")] == ["agents-1"]
    assert ("DELETE", "/hostgroup/agents/nodes/agents-2") in [r[:2] for r in api.state.requests]
    proc = repo.slicer("exec", "reviewer", "--", "true", check=False)
    assert proc.returncode == 1 and "VM reviewer does not exist" in proc.stderr.decode()


def test_lookup_by_name_tag_and_hostname(repo, unix_api):
    repo.slicer_json("vm", "launch", "builder")
    repo.slicer("exec", "builder", "--cwd", ".", "--", "true")
    assert {"tag": ["name=builder"]} in unix_api.queries("GET", "/nodes")
    repo.slicer("exec", "agents-1", "--cwd", ".", "--", "true")       # the hostname works too


def test_exec_binary_both_ways_exact(repo, unix_api):
    repo.slicer_json("vm", "launch", "bin")
    blob = bytes(range(256)) * 4096 + b"\xff\xfe\x00"
    proc = repo.slicer("exec", "bin", "--cwd", ".", "--", "cat", input=blob)
    assert proc.stdout == blob
    proc = repo.slicer("exec", "bin", "--cwd", ".", "--", "sh", "-c", "printf '\\377\\000' >&2")
    assert proc.stderr == b"\xff\x00"


def test_push_launch_status_diff_pull_without_duplex_exec(repo, api):
    repo.write("notes.txt", "dirty\n")
    result = repo.slicer_json("push", "--launch", "--tag", "ticket=42")
    name = result["vm"]
    assert result["launched"] and result["provider"] == "slicer"
    node = api.state.nodes[name]
    tags = dict(t.split("=", 1) for t in node["tags"])
    assert tags["repo"] == "project" and tags["branch"] == "main" and tags["worktree"] == str(repo.path)
    assert tags["ticket"] == "42" and node["persistent"] is True
    # The agent path never sent a request body to exec: it came through cp, background exec, /forward.
    pushed_execs = _exec_queries(api, name)
    assert all("stdin" not in q for q in pushed_execs)
    assert any(q.get("background") == ["true"] for q in pushed_execs)
    assert [q["path"][0].rsplit(".", 1)[-1] for q in api.queries("POST", "/vm/%s/cp" % name)] == ["zip", "token"]
    agent = api.background(name)[0]
    sock_dir = os.path.dirname(agent.argv[3][len("unix:"):])
    assert os.stat(sock_dir).st_mode & 0o777 == 0o700
    assert repo.vm_status(name) == "?? notes.txt\n"
    proc = repo.slicer("exec", name, "--", "python3", "-c", "import git_slicer", check=False)
    assert proc.returncode == 1          # agentless guest: the agent was shipped
    repo.vm_sh(name, "echo vm > vm.txt && git add vm.txt && git commit -q -m 'from the VM'")
    assert "vm.txt" in repo.slicer("diff", name).stdout.decode()
    repo.slicer("pull", name)
    assert repo.git("log", "-1", "--format=%s").strip() == "from the VM"
    assert (repo.path / "vm.txt").read_text() == "vm\n"
    assert repo.slicer_json("status", name)["in_sync"] is True
    # one agent served every session: found again through the exec list
    assert len(api.background(name)) == 1 and api.queries("GET", "/vm/%s/exec" % name)


def test_agent_restarted_when_gone(repo, unix_api):
    name = repo.slicer_json("push", "--launch")["vm"]
    agent = unix_api.background(name)[0]
    agent.proc.kill()
    agent.proc.wait()
    repo.write("more.txt", "more\n")
    repo.slicer("push", name)
    assert [bg.proc.poll() is None for bg in unix_api.background(name)] == [False, True]
    # the agent is still there, but its socket is not: connect falls back to a fresh one
    live = unix_api.background(name)[1]
    os.unlink(live.argv[3][len("unix:"):])
    repo.write("again.txt", "again\n")
    repo.slicer("push", name)
    assert len(unix_api.background(name)) == 3


def test_hooks_background_push(repo, unix_api):
    name = repo.slicer_json("push", "--launch")["vm"]
    repo.slicer("hooks", "install")
    repo.write("hooked.txt", "hooked\n")
    repo.commit("hooked")
    slicer_dir = repo.git("rev-parse", "--path-format=absolute", "--git-path", "slicer").strip()
    assert autopush.wait_idle(slicer_dir, 120)
    head = repo.git("rev-parse", "HEAD").strip()
    assert repo.vm_git(name, "rev-parse", "HEAD").strip() == head


def test_shell_uses_the_pty_endpoint(repo, unix_api):
    name = repo.slicer_json("push", "--launch")["vm"]
    proc = repo.slicer("shell", name, input=b"pwd; echo shell-$((6*7))\nexit\n")
    out = proc.stdout.decode()
    assert "shell-42" in out and out.count(os.path.join(unix_api.state.home(name), "project")) >= 1
    shells = [q for m, h, q in unix_api.state.requests if m == "SHELL"]
    assert shells and shells[-1]["uid"] == ["1000"]


def test_hostgroup_required_with_several(repo, tmp_path, monkeypatch):
    double = _double(tmp_path, monkeypatch, hostgroups=("agents", "gpu"))
    try:
        proc = repo.slicer("vm", "launch", check=False)
        assert proc.returncode == 2
        assert proc.stderr.decode().splitlines()[0] == \
            "error: the Slicer daemon has several host groups (agents, gpu); choose one"
        assert repo.slicer_json("vm", "launch", "--hostgroup", "gpu")["hostname"] == "gpu-1"
        result = repo.slicer_json("push", "--launch", "--hostgroup", "gpu")
        assert result["vm"] == "gpu-2"
    finally:
        double.stop()
        shutil.rmtree(double.top, ignore_errors=True)


def test_names_are_dns_labels(repo, unix_api):
    for bad in ("Upper", "under_score", "dot.ted", "trail-"):
        proc = repo.slicer("vm", "launch", bad, check=False)
        assert proc.returncode == 2 and "invalid" in proc.stderr.decode() and "Traceback" not in proc.stderr.decode()
    assert not unix_api.queries("POST", "/hostgroup/agents/nodes")
    proc = repo.slicer("vm", "launch", "ok", "--tag", "novalue", check=False)
    assert proc.returncode == 2 and "KEY=VALUE" in proc.stderr.decode()


def test_create_201_and_408_and_delete_error(repo, unix_api):
    unix_api.state.create_status = 201
    assert repo.slicer_json("vm", "launch", "one")["hostname"] == "agents-1"
    unix_api.state.create_timeout = True
    proc = repo.slicer("vm", "launch", "two", check=False)
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == 1 and lines[0].startswith("error: the new Slicer VM's agent did not report within")
    assert "Slicer removed the VM" in lines[0] and "Traceback" not in proc.stderr.decode()
    unix_api.state.create_timeout = False
    unix_api.state.delete_error = "disk busy"
    proc = repo.slicer("vm", "rm", "one", check=False)
    assert proc.returncode == 1
    assert proc.stderr.decode().splitlines()[0] == "error: Slicer could not delete VM one: disk busy"


def test_legacy_frames_exec_works(repo, unix_api):
    repo.slicer_json("vm", "launch", "old")
    unix_api.state.legacy_frames = True
    proc = repo.slicer("exec", "old", "--cwd", ".", "--", "sh", "-c", "printf '\\000\\377'; echo e >&2; exit 3",
                       check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, b"\x00\xff", b"e\n")
    proc = repo.slicer("exec", "old", "--cwd", "/nonexistent-dir", "--", "true", check=False)
    assert proc.returncode == 126


def test_start_failure_frame_is_one_line(repo, unix_api, monkeypatch):
    repo.slicer_json("vm", "launch", "nosh")
    monkeypatch.setattr(unix_api.server, "guest_path", "/nonexistent")
    for legacy in (False, True):
        unix_api.state.legacy_frames = legacy
        proc = repo.slicer("exec", "nosh", "--cwd", ".", "--", "true", check=False)
        err = proc.stderr.decode()
        assert proc.returncode == 1 and err.startswith("error: VM nosh: the command could not start: exec sh:")
        assert "Traceback" not in err


def test_text_only_agent_fails_loudly(repo, unix_api):
    repo.slicer_json("vm", "launch", "text")
    unix_api.state.text_only = True
    proc = repo.slicer("exec", "text", "--cwd", ".", "--", "printf", "\\377", check=False)
    assert proc.returncode == 1 and proc.stdout == b""
    assert proc.stderr.decode().splitlines()[0] == (
        "error: VM text: the VM's Slicer agent sent text output although base64 was asked for "
        "(stdio=base64): binary output would be corrupted")


def test_old_agent_without_background_fails_in_one_line(repo, unix_api):
    repo.slicer_json("vm", "launch", "old")
    unix_api.state.no_background = True
    unix_api.state.legacy_frames = True
    proc = repo.slicer("push", "old", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err
    assert err.splitlines()[0].startswith("error: VM old: its Slicer agent has no background exec")


def test_api_errors_are_one_line(repo, api, monkeypatch, tmp_path):
    proc = repo.slicer("push", "ghost", check=False)
    assert proc.returncode == 1 and proc.stderr.decode().startswith("error: VM ghost does not exist")
    if api.server.token:
        (tmp_path / "bad-token").write_text("nope\n")
        monkeypatch.setenv("SLICER_TOKEN_FILE", str(tmp_path / "bad-token"))
        proc = repo.slicer("vm", "list", check=False)
        assert proc.returncode == 1
        assert proc.stderr.decode().splitlines()[0] == \
            "error: the Slicer API refused the request (HTTP 401, authentication failed): unauthorized"
    monkeypatch.setenv("SLICER_URL", str(tmp_path / "nothing.sock"))
    proc = repo.slicer("vm", "list", check=False)
    assert proc.returncode == 1
    assert proc.stderr.decode().startswith("error: cannot reach the Slicer API at %s: no such socket"
                                           % (tmp_path / "nothing.sock"))


def test_agent_is_private_to_its_user_and_needs_the_token(repo, unix_api):
    from git_slicer.errors import AgentFailed
    from git_slicer.transport import parse_address, open_channel
    name = repo.slicer_json("push", "--launch")["vm"]
    argv = unix_api.background(name)[0].argv
    sock_path, token_path = argv[3][len("unix:"):], argv[5]
    directory = os.path.dirname(sock_path)
    assert os.path.dirname(token_path) == directory == os.path.join(unix_api.state.home(name), ".git-slicer")
    assert os.stat(directory).st_mode & 0o777 == 0o700
    assert os.stat(token_path).st_mode & 0o777 == 0o600 and os.stat(sock_path).st_mode & 0o777 == 0o600
    assert len(open(token_path).read().strip()) == 64
    for token in (None, "wrong"):
        with pytest.raises(AgentFailed, match="authentication failed"):
            open_channel(parse_address("unix:" + sock_path), description="agent", token=token)


@pytest.mark.parametrize("knob", ["legacy_frames", "text_only"])
def test_push_with_older_agents_works_or_fails_in_one_line(repo, unix_api, knob):
    repo.slicer_json("vm", "launch", "old")
    setattr(unix_api.state, knob, True)
    proc = repo.slicer("push", "old", check=False)
    err = proc.stderr.decode()
    assert "Traceback" not in err
    if knob == "legacy_frames":
        assert proc.returncode == 0
        assert repo.vm_git("old", "rev-parse", "HEAD") == repo.git("rev-parse", "HEAD")
    else:
        assert proc.returncode == 1 and len(err.splitlines()) <= 2
        assert err.startswith("error: VM old: the VM's Slicer agent sent text output although base64 was asked for")


def test_daemon_without_forward_fails_in_one_line_and_leaves_no_agent(repo, unix_api):
    repo.slicer_json("vm", "launch", "nofwd")
    unix_api.state.no_forward = True
    proc = repo.slicer("push", "nofwd", check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err
    assert err.splitlines()[0] == ("error: VM nofwd: the Slicer API failed: GET /vm/agents-1/forward: "
                                   "HTTP 404: no route for GET /vm/agents-1/forward")
    agents = unix_api.background("agents-1")
    assert len(agents) == 1 and agents[0].proc.wait(10) is not None
