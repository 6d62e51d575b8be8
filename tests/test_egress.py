"""Egress allowlists: from inside a real local sandbox, the allowed host answers through the
host-side proxy, anything else is refused and logged, and nothing leaves without the proxy.
Secrets: `exec --env NAME` hands exactly one host variable to one command."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import HAVE_BWRAP

needs_bwrap = pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap not installed")


class Server:
    """A real HTTP server on 127.0.0.1 that answers with its name and counts its requests."""

    def __init__(self, name: str):
        self.name = name
        self.hits = []
        self.keys = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                owner.hits.append((self.path, self.headers.get("Host")))
                owner.keys.append(self.headers.get("x-api-key"))
                body = ("hello from %s\n" % owner.name).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers():
    allowed, other = Server("allowed"), Server("other")
    yield allowed, other
    allowed.close()
    other.close()


# Runs inside the VM: each argument is a raw request (JSON string) sent to the proxy on
# 127.0.0.1:3128, or "direct:PORT" for a connection that bypasses it; prints one JSON line each.
PROBE = r'''
import json, socket, sys
def send(raw, port=3128):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(raw.encode())
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
        if raw.startswith("CONNECT") and b"\r\n\r\n" in data and data.startswith(b"HTTP/1.1 200"):
            head, _, rest = data.partition(b"\r\n\r\n")
            s.sendall(b"GET /tunnel HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            while True:
                b = s.recv(65536)
                if not b:
                    break
                rest += b
            data = head + b"\r\n\r\n" + rest
            break
    return data.decode("utf-8", "replace")
for arg in sys.argv[1:]:
    if arg.startswith("direct:"):
        try:
            socket.create_connection(("127.0.0.1", int(arg[7:])), timeout=5)
            print(json.dumps("connected"))
        except OSError as e:
            print(json.dumps("failed: %s" % e))
        continue
    print(json.dumps(send(json.loads(arg))))
'''


def probe(repo, vm, *requests, check=True):
    args = [r if r.startswith("direct:") else json.dumps(r) for r in requests]
    out = repo.slicer("exec", vm, "--", "python3", "-c", PROBE, *args, check=check).stdout.decode()
    return [json.loads(line) for line in out.splitlines()]


def status(response: str) -> int:
    return int(response.split(" ", 2)[1]) if response.startswith("HTTP/") else 0


@needs_bwrap
def test_allowed_host_answers_through_the_proxy_others_are_refused_and_logged(repo, servers):
    allowed, other = servers
    a, o = allowed.port, other.port
    vm = repo.slicer_json("push", "--launch", "--allow", "127.0.0.1:%d" % a)["vm"]
    out = probe(repo, vm,
                "GET http://127.0.0.1:%d/plain HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (a, a),
                "CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (a, a),
                "GET http://127.0.0.1:%d/ HTTP/1.1\r\n\r\n" % o,
                "CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n" % o,
                "direct:%d" % a, "direct:%d" % o)
    assert status(out[0]) == 200 and out[0].endswith("hello from allowed\n")
    assert status(out[1]) == 200 and out[1].endswith("hello from allowed\n")      # through the tunnel
    assert status(out[2]) == 403 and "not on the allowlist" in out[2]
    assert status(out[3]) == 403
    assert out[4].startswith("failed") and out[5].startswith("failed")           # no way around the proxy
    assert [path for path, _ in allowed.hits] == ["/plain", "/tunnel"]
    assert other.hits == []

    entries = repo.slicer_json("vm", "log", vm)       # an allowed connection is logged when it closes
    assert sorted((e["verdict"], e["method"], e["port"]) for e in entries) == sorted([
        ("allowed", "GET", a), ("allowed", "CONNECT", a), ("refused", "GET", o), ("refused", "CONNECT", o)])
    for entry in entries:
        assert entry["host"] == "127.0.0.1"
        if entry["verdict"] == "allowed":
            assert entry["down"] > 0 and entry["up"] > 0
    text = repo.slicer("vm", "log", vm).stdout.decode()
    assert "refused  CONNECT 127.0.0.1:%d" % o in text


@needs_bwrap
def test_tricks_do_not_reach_an_unlisted_target(repo, servers):
    allowed, other = servers
    a, o = allowed.port, other.port
    vm = repo.slicer_json("push", "--launch", "--allow", "127.0.0.1:%d" % a)["vm"]
    tricks = [
        "CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (o, a),       # Host vs target
        "GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (o, a),   # absolute-form vs Host
        "GET http://127.0.0.1:%d/ HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (a, o),   # and the other way round
        "CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (a, o),       # and for CONNECT
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % o,                          # origin-form, Host decides
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nHost: 127.0.0.1:%d\r\n\r\n" % (a, o),
        "GET http://127.0.0.1:%d@127.0.0.1:%d/ HTTP/1.1\r\n\r\n" % (a, o),            # userinfo
        "CONNECT 127.1:%d HTTP/1.1\r\n\r\n" % a,                                      # IP spellings
        "CONNECT 2130706433:%d HTTP/1.1\r\n\r\n" % a,
        "CONNECT 0x7f.0.0.1:%d HTTP/1.1\r\n\r\n" % a,
        "CONNECT [::ffff:127.0.0.1]:%d HTTP/1.1\r\n\r\n" % a,
        "CONNECT localhost:%d HTTP/1.1\r\n\r\n" % a,                                  # a name no rule lists
        "CONNECT 127.0.0.1:0%d HTTP/1.1\r\n\r\n" % a,                                 # port spellings
        "CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n" % (a + 65536),
        "CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n",
        "GET https://127.0.0.1:%d/ HTTP/1.1\r\n\r\n" % a,
    ]
    out = probe(repo, vm, *tricks)
    assert [status(r) for r in out] == [403, 403, 403, 403, 403, 400, 400, 400, 400, 400, 403, 403, 400, 400, 400, 400]
    assert other.hits == [] and allowed.hits == []
    refused = [e for e in repo.slicer_json("vm", "log", vm) if e["verdict"] == "refused"]
    assert len(refused) == len(tricks)


@needs_bwrap
def test_allow_and_deny_change_a_vm_at_once_and_names_resolve_on_the_host(repo, servers):
    allowed, _ = servers
    a = allowed.port
    vm = repo.slicer_json("push", "--launch")["vm"]
    # No allowlist: no proxy, no proxy variables, no socket (no network, as before).
    out = repo.vm_sh(vm, "env | grep -i _proxy; test -e /run/git-slicer && echo socket; echo end")
    assert out == "end\n"
    assert probe(repo, vm, "direct:3128")[0].startswith("failed")

    result = repo.slicer_json("vm", "allow", vm, "LocalHost.:%d" % a, "example.org")
    assert result["egress"] == ["localhost:%d" % a, "example.org"]
    request = "GET http://localhost:%d/named HTTP/1.1\r\n\r\n" % a
    assert status(probe(repo, vm, request)[0]) == 200
    assert allowed.hits == [("/named", "localhost:%d" % a)]
    assert status(probe(repo, vm, "CONNECT 127.0.0.1:%d HTTP/1.1\r\n\r\n" % a)[0]) == 403   # IP not listed

    result = repo.slicer_json("vm", "deny", vm, "localhost:%d" % a, "nothere.org")
    assert result == {"vm": vm, "egress": ["example.org"], "not_listed": ["nothere.org"], "ok": True}
    assert status(probe(repo, vm, request)[0]) == 403
    assert repo.slicer_json("vm", "list")[0]["egress"] == ["example.org"]


@needs_bwrap
def test_vm_rm_ends_the_proxy_of_a_running_command(repo, servers):
    allowed, _ = servers
    a = allowed.port
    vm = repo.slicer_json("push", "--launch", "--allow", "127.0.0.1:%d" % a)["vm"]
    # The command asks once, waits for a line on stdin, then asks again.
    script = PROBE.split("for arg in")[0] + (
        "print(json.dumps(send(json.loads(sys.argv[1]))), flush=True)\n"
        "sys.stdin.readline()\n"
        "try:\n    print(json.dumps(send(json.loads(sys.argv[1]))))\n"
        "except OSError as e:\n    print(json.dumps('failed: %s' % e))\n")
    request = json.dumps("GET http://127.0.0.1:%d/ HTTP/1.1\r\n\r\n" % a)
    proc = subprocess.Popen([*repo_slicer_argv(), "exec", vm, "--", "python3", "-c", script, request],
                            cwd=repo.path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = json.loads(proc.stdout.readline())
    assert status(first) == 200
    repo.slicer("vm", "rm", vm)
    proc.stdin.write(b"go\n")
    proc.stdin.close()
    rest = proc.stdout.read().decode()
    proc.wait(30)
    assert "hello from allowed" not in rest
    assert len(allowed.hits) == 1


def repo_slicer_argv():
    from conftest import SLICER
    return SLICER


def test_rules_parse_canonically_and_refuse_disguised_addresses():
    from git_slicer.egress.allowlist import BadHost, parse_rule, parse_target
    assert parse_rule("PyPI.org").text == "pypi.org"
    assert parse_rule("*.pythonhosted.org:443").text == "*.pythonhosted.org:443"
    assert parse_rule("[::1]:8080").text == "[::1]:8080" and parse_rule("::1").text == "[::1]"
    rule = parse_rule("*.example.com")
    assert rule.matches("a.example.com", 443) and rule.matches("a.example.com", 80)
    assert not rule.matches("example.com", 443) and not rule.matches("a.example.com", 22)
    assert not rule.matches("evilexample.com", 443)
    assert parse_rule("example.com:8443").matches("example.com", 8443)
    assert not parse_rule("example.com:8443").matches("example.com", 443)
    for bad in ("127.1", "0x7f000001", "2130706433", "0177.0.0.1", "a b", "http://x", "u@h", "h:0",
                "h:65536", "h:+1", "h:", "-h", "a..b", "[::1", "é.com"):
        with pytest.raises(BadHost):
            parse_rule(bad)
    assert parse_target("Example.COM.:443") == ("example.com", 443)
    assert parse_target("example.com", 80) == ("example.com", 80)
    with pytest.raises(BadHost):
        parse_target("example.com")                 # CONNECT needs a port


def test_usage_errors_for_allow(repo, tmp_path):
    proc = repo.slicer("push", "--allow", "example.com", check=False)
    assert proc.returncode == 2 and b"--launch" in proc.stderr
    proc = repo.slicer("vm", "launch", "--allow", "127.1", check=False)
    assert proc.returncode == 2 and b"IP address in disguise" in proc.stderr
    proc = repo.slicer("vm", "launch", "--provider", "qemu", "--allow", "example.com", check=False)
    assert proc.returncode == 2 and b"docs/qemu.md" in proc.stderr and b"Traceback" not in proc.stderr
    assert repo.slicer_json("vm", "list") == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_the_proxy_socket_is_not_reachable_by_other_users(tmp_path):
    from git_slicer.egress.log import EgressLog
    from git_slicer.egress.proxy import EgressProxy
    with EgressProxy("vm-x", lambda: ["example.org"], EgressLog(str(tmp_path / "log"))) as proxy:
        assert os.stat(proxy.dir).st_mode & 0o777 == 0o700
        code = ("import os, socket, sys; os.setgid(65534); os.setuid(65534); s = socket.socket(socket.AF_UNIX)\n"
                "try:\n s.connect(sys.argv[1]); print('connected')\nexcept PermissionError: print('denied')")
        out = subprocess.run([sys.executable, "-c", code, proxy.path], stdout=subprocess.PIPE, check=True).stdout
        assert out == b"denied\n"
        with socket.socket(socket.AF_UNIX) as own:        # the owner does reach it
            own.connect(proxy.path)
    assert not os.path.exists(proxy.dir)


@needs_bwrap
def test_exec_env_hands_exactly_the_named_variable(launched, monkeypatch):
    repo, vm = launched
    monkeypatch.setenv("HOST_SECRET", "s3cr3t-value")
    monkeypatch.setenv("API_KEY", "key-value")
    plain = repo.slicer("exec", vm, "--", "env").stdout.decode()
    assert "s3cr3t-value" not in plain and "key-value" not in plain and "HOST_SECRET" not in plain
    handed = repo.slicer("exec", vm, "--env", "API_KEY", "--", "env").stdout.decode()
    assert "API_KEY=key-value" in handed.splitlines()
    assert "s3cr3t-value" not in handed
    assert set(line.split("=", 1)[0] for line in handed.splitlines()) - set(
        line.split("=", 1)[0] for line in plain.splitlines()) == {"API_KEY"}
    proc = repo.slicer("exec", vm, "--env", "NOT_SET_ANYWHERE", "--", "true", check=False)
    assert proc.returncode == 2 and b"no variable NOT_SET_ANYWHERE" in proc.stderr
    proc = repo.slicer("exec", vm, "--env", "API_KEY=inline", "--", "true", check=False)
    assert proc.returncode == 2


# The "agent CLI" committed in the repository: asks the "model API" (with the key it was handed)
# what to write, fetches a "package" from the "index", both through the proxy variables the VM
# was given, and commits the result as an agent would.
AGENT = r'''
import os, subprocess, sys, urllib.request
api, index = sys.argv[1], sys.argv[2]
request = urllib.request.Request(api + "/v1/messages", headers={"x-api-key": os.environ.get("API_KEY", "")})
answer = urllib.request.urlopen(request, timeout=10).read().decode()
package = urllib.request.urlopen(index + "/simple/helper/", timeout=10).read().decode()
with open("answer.txt", "w") as fh:
    fh.write(answer + package)
subprocess.run(["git", "add", "answer.txt"], check=True)
subprocess.run(["git", "commit", "-qm", "agent: answer"], check=True)
'''


@needs_bwrap
def test_an_agent_in_a_vm_in_one_command(repo, servers, monkeypatch):
    api, index = servers
    repo.write("agent.py", AGENT)
    repo.commit("add the agent")
    # "localhost." is a name the proxy resolves on the host; it is not in the VM's NO_PROXY
    # (which keeps the VM's own loopback direct), so clients take HTTPS_PROXY/HTTP_PROXY.
    vm = repo.slicer_json("push", "--launch", "--allow", "localhost:%d" % api.port,
                          "--allow", "localhost:%d" % index.port)["vm"]
    monkeypatch.setenv("API_KEY", "sk-test-123")
    repo.slicer("exec", "--env", "API_KEY", "--", "python3", "agent.py",
                "http://localhost.:%d" % api.port, "http://localhost.:%d" % index.port)
    assert [path for path, _ in api.hits] == ["/v1/messages"] and api.keys == ["sk-test-123"]
    assert [path for path, _ in index.hits] == ["/simple/helper/"]
    log = repo.slicer_json("log")
    assert [c["subject"] for c in log["commits"]] == ["agent: answer"]
    assert "answer.txt" in repo.slicer("diff", "--stat").stdout.decode()
    repo.slicer("pull")
    assert (repo.path / "answer.txt").read_text() == "hello from allowed\nhello from other\n"
    assert repo.git("log", "-1", "--format=%s").strip() == "agent: answer"
    assert {e["port"] for e in repo.slicer_json("vm", "log", vm) if e["verdict"] == "allowed"} == {api.port, index.port}
    assert "sk-test-123" not in repo.vm_sh(vm, "env; cat ~/.bash_history 2>/dev/null; true")


def test_exec_op_env_reaches_one_command_only(tmp_path, monkeypatch):
    """qemu's `exec --env` rides on the agent's exec op: the variable is added for that command."""
    import io
    from git_slicer.session import AgentSession
    from git_slicer.transport import ProcessChannel
    monkeypatch.setenv("AGENT_OWN", "agent-env")
    channel = ProcessChannel([sys.executable, "-m", "git_slicer.agent", "--stdio"], env=dict(os.environ))
    session = AgentSession(channel, "t")
    session.hello()
    show = ["sh", "-c", 'echo "${TOKEN-unset} ${AGENT_OWN-unset}"']
    out = io.BytesIO()
    assert session.exec(show, str(tmp_path), out, io.BytesIO(), env={"TOKEN": "t0k"}) == 0
    assert session.exec(show, str(tmp_path), out, io.BytesIO()) == 0
    assert out.getvalue() == b"t0k agent-env\nunset agent-env\n"
    session.conn.send({"op": "exec", "argv": ["true"], "cwd": "", "env": {"A=B": "x"}})
    assert session.conn.recv()["error"]["code"] == "bad-request"
    session.close()
    assert channel.proc.wait(10) == 0


def test_the_proxy_starts_under_a_long_tmpdir_and_fails_in_one_line(tmp_path, monkeypatch):
    import tempfile
    from git_slicer.egress.log import EgressLog
    from git_slicer.egress.proxy import EgressProxy
    from git_slicer.errors import SlicerError
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))     # a socket path there would be too long
    with EgressProxy("vm-x", lambda: [], EgressLog(str(tmp_path / "log"))) as proxy:
        assert len(proxy.path) < 108 and os.path.exists(proxy.path)
    broken = EgressProxy("vm-x", lambda: [], EgressLog(str(tmp_path / "log")))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(os, "chmod", lambda *a: (_ for _ in ()).throw(PermissionError(13, "denied")))
    with pytest.raises(SlicerError, match="cannot start the egress proxy of VM vm-x"):
        broken.start()
    monkeypatch.undo()
    assert not os.path.exists(broken.dir)


def test_providers_without_env_or_an_allowlist_refuse_in_one_line(repo):
    """`exec --env` and `vm allow/deny/log` ask the provider's declared capabilities
    (providers.Provider: passes_env, supports_egress); a VM known only by address has neither."""
    repo.git("config", "slicer.far.address", "ssh:far.example")
    proc = repo.slicer("exec", "far", "--cwd", ".", "--env", "HOME", "--", "true", check=False)
    assert proc.returncode == 2
    assert proc.stderr.decode().splitlines()[0] == "error: provider address cannot hand variables to one command (--env)"
    for args in (("vm", "allow", "far", "example.org"), ("vm", "log", "far")):
        proc = repo.slicer(*args, check=False)
        assert proc.returncode == 2, args
        assert proc.stderr.decode().splitlines()[0] == \
            "error: provider address cannot enforce an egress allowlist (--allow)", args
