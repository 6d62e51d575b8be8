"""The Slicer provider against a contract double of the Slicer REST API (tests/slicer_api_double.py):
a real HTTP server on a unix socket (no token) and on 127.0.0.1 (bearer token). The double's "VMs"
are directories whose python3 cannot import git_slicer, so the agent is shipped over exec stdin."""

from __future__ import annotations

import shutil
import tempfile

import pytest

from slicer_api_double import SlicerAPIDouble


@pytest.fixture(params=["unix", "tcp"])
def api(request, tmp_path, monkeypatch):
    sockdir = tempfile.mkdtemp(prefix="gs-api-", dir="/tmp")
    root = tmp_path / "slicer-vms"
    root.mkdir()
    if request.param == "unix":
        double = SlicerAPIDouble(str(root), unix_path=sockdir + "/slicer.sock").start()
    else:
        double = SlicerAPIDouble(str(root), token="api-token-123").start()
        token_file = tmp_path / "slicer-token"
        token_file.write_text("api-token-123\n")
        monkeypatch.setenv("SLICER_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("SLICER_URL", double.url)
    monkeypatch.setenv("GIT_SLICER_PROVIDER", "slicer")
    monkeypatch.delenv("SLICER_TOKEN", raising=False)
    yield double
    double.stop()
    shutil.rmtree(sockdir, ignore_errors=True)


def test_launch_list_exec_rm(repo, api):
    vm = repo.slicer_json("vm", "launch")
    assert vm["provider"] == "slicer" and vm["name"] == "agents-1" and vm["hostgroup"] == "agents"
    named = repo.slicer_json("vm", "launch", "reviewer")
    assert named["name"] == "reviewer" and named["hostname"] == "agents-2"
    listed = {v["name"]: v for v in repo.slicer_json("vm", "list")}
    assert set(listed) == {"agents-1", "reviewer"} and listed["reviewer"]["tags"]["name"] == "reviewer"
    proc = repo.slicer("exec", "reviewer", "--cwd", ".", "--", "sh", "-c", "echo out; echo err >&2; exit 7", check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, b"out\n", b"err\n")
    proc = repo.slicer("exec", "agents-1", "--cwd", ".", "--", "cat", input=b"\x00binary\xff")
    assert proc.stdout == b"\x00binary\xff"
    assert repo.slicer_json("vm", "rm", "reviewer") == {"removed": ["reviewer"], "retired_links": []}
    assert [v["name"] for v in repo.slicer_json("vm", "list")] == ["agents-1"]
    assert ("DELETE", "/hostgroup/agents/nodes/agents-2") in api.state.requests
    proc = repo.slicer("exec", "reviewer", "--", "true", check=False)
    assert proc.returncode == 1 and "VM reviewer does not exist" in proc.stderr.decode()


def test_push_launch_and_pull(repo, api):
    repo.write("notes.txt", "dirty\n")
    result = repo.slicer_json("push", "--launch")
    name = result["vm"]
    assert result["launched"] and result["provider"] == "slicer"
    node = api.state.nodes[name]
    tags = dict(t.split("=", 1) for t in node["tags"])
    assert tags["repo"] == "project" and tags["branch"] == "main" and tags["worktree"] == str(repo.path)
    assert node["persistent"] is True
    assert repo.vm_status(name) == "?? notes.txt\n"
    proc = repo.slicer("exec", name, "--", "python3", "-c", "import git_slicer", check=False)
    assert proc.returncode == 1          # agentless guest: the agent was shipped over exec stdin
    repo.vm_sh(name, "echo vm > vm.txt && git add vm.txt && git commit -q -m 'from the VM'")
    repo.slicer("pull", name)
    assert repo.git("log", "-1", "--format=%s").strip() == "from the VM"
    assert (repo.path / "vm.txt").read_text() == "vm\n"
    assert repo.slicer_json("status", name)["in_sync"] is True


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
