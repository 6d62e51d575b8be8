"""Transports against real peers: a real sshd on 127.0.0.1, the agent listening on unix and tcp,
a double of the Firecracker vsock muxer in front of an agent, a real AF_VSOCK bind, exec through
`sh -c`, and agentless guests (system python3 without git_slicer)."""

from __future__ import annotations

import getpass
import os
import shutil
import stat
import socket
import subprocess
import sys
import time

import pytest

from conftest import run
from fake_firecracker_relay import FakeFirecrackerRelay
from git_slicer import transport
from git_slicer.errors import AgentFailed, UsageError
from git_slicer.wire.framing import Connection

GUEST_PATH = "/usr/bin:/bin"        # the system python3 there cannot import git_slicer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




class Listener:
    """`git slicer agent --listen ADDR` as a real process."""

    def __init__(self, address, *extra, env=None):
        self.proc = subprocess.Popen([sys.executable, "-m", "git_slicer", "agent", "--listen", address, *extra],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        line = self.proc.stderr.readline().decode()
        if "listening on" not in line:
            self.proc.wait(5)
            raise RuntimeError("agent did not start: %s%s" % (line, self.proc.stderr.read().decode()))
        self.address = line.rsplit("listening on ", 1)[1].strip()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.proc.stderr.close()


@pytest.fixture
def sockdir():
    """A short directory for unix sockets (108-byte path limit)."""
    import tempfile
    path = tempfile.mkdtemp(prefix="gs-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def guest(tmp_path):
    """Where a registered VM keeps the repository (the guest is this machine in these tests)."""
    path = tmp_path / "guest"
    path.mkdir()
    return path


def register(repo, vm, address, guest, **extra):
    repo.git("config", "slicer.%s.address" % vm, address)
    repo.git("config", "slicer.%s.guestPath" % vm, str(guest / "project"))
    for key, value in extra.items():
        repo.git("config", "slicer.%s.%s" % (vm, key), value)


def vm_commit(guest, message="work in the VM"):
    """An agent's commit inside the VM's repository, plus an uncommitted file."""
    path = guest / "project"
    (path / "from-vm.txt").write_text("made in the VM\n")
    run(["git", "add", "from-vm.txt"], cwd=path)
    run(["git", "commit", "-q", "-m", message], cwd=path)
    (path / "scratch.txt").write_text("uncommitted\n")
    return run(["git", "rev-parse", "HEAD"], cwd=path).stdout.decode().strip()


def push_pull_roundtrip(repo, vm, guest):
    repo.write("notes.txt", "dirty on the host\n")
    result = repo.slicer_json("push", vm)
    assert result["vm"] == vm and result["first_push"]
    assert run(["git", "status", "--porcelain"], cwd=guest / "project").stdout.decode() == "?? notes.txt\n"
    head = vm_commit(guest)
    repo.slicer("pull", vm)
    assert repo.git("rev-parse", "HEAD").strip() == head
    assert (repo.path / "scratch.txt").read_text() == "uncommitted\n"


def error_line(proc) -> str:
    text = proc.stderr.decode()
    assert "Traceback" not in text
    return text.splitlines()[0]


# -- addresses -------------------------------------------------------------------
@pytest.mark.parametrize("text, fields", [
    ("vsock:3:5000", {"kind": "vsock", "cid": 3, "port": 5000}),
    ("hvsock:/run/fc/vm.sock:1024", {"kind": "hvsock", "path": "/run/fc/vm.sock", "port": 1024}),
    ("unix:/run/agent.sock", {"kind": "unix", "path": "/run/agent.sock"}),
    ("tcp:127.0.0.1:7000", {"kind": "tcp", "host": "127.0.0.1", "port": 7000}),
    ("tcp:[::1]:7000", {"kind": "tcp", "host": "::1", "port": 7000}),
    ("ssh:dev", {"kind": "ssh", "host": "dev", "user": "", "port": 0}),
    ("ssh:root@10.0.0.2:2222", {"kind": "ssh", "host": "10.0.0.2", "user": "root", "port": 2222}),
    ("exec:docker exec -i box", {"kind": "exec", "command": ["docker", "exec", "-i", "box"]}),
])
def test_parse_address(text, fields):
    address = transport.parse_address(text)
    for key, value in fields.items():
        assert getattr(address, key) == value


@pytest.mark.parametrize("text", ["", "box", "ftp:x", "vsock:3", "vsock:x:1", "hvsock:5000", "unix:",
                                  "tcp:host", "tcp:h:99999", "ssh:", "ssh:-oProxyCommand=x", "ssh:a b",
                                  "exec:", "exec:'unterminated"])
def test_parse_address_rejects(text):
    with pytest.raises(UsageError) as info:
        transport.parse_address(text)
    assert "\n" not in str(info.value)


def test_vsock_without_af_vsock(monkeypatch):
    monkeypatch.delattr(socket, "AF_VSOCK", raising=False)
    with pytest.raises(AgentFailed, match="AF_VSOCK is not available"):
        transport.vsock_connect(3, 5000, 1)


@pytest.mark.skipif(not hasattr(socket, "AF_VSOCK"), reason="no AF_VSOCK")
def test_vsock_connect_to_missing_vm_is_one_line():
    with pytest.raises(AgentFailed) as info:
        transport.vsock_connect(4242, 5000, 1)      # no VM has CID 4242
    assert "vsock CID 4242 port 5000" in str(info.value) and "\n" not in str(info.value)


def test_agent_listens_on_vsock():
    if not hasattr(socket, "AF_VSOCK"):
        pytest.skip("no AF_VSOCK in this python")
    port = 20000 + os.getpid() % 20000
    agent = subprocess.Popen([sys.executable, "-m", "git_slicer", "agent", "--listen", "vsock:%d" % port],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        line = agent.stderr.readline().decode()
        if "cannot listen" in line:
            pytest.skip("AF_VSOCK bind unavailable here: " + line.strip())
        assert line.strip() == "git-slicer agent: listening on vsock:%d" % port
    finally:
        agent.terminate()
        agent.wait(10)
        agent.stderr.close()


# -- unix and tcp ---------------------------------------------------------------
def test_unix_push_and_pull(repo, guest, sockdir):
    agent = Listener("unix:%s/agent.sock" % sockdir)
    try:
        assert oct(os.stat(sockdir + "/agent.sock").st_mode & 0o777) == "0o600"
        register(repo, "box", "unix:%s/agent.sock" % sockdir, guest)
        push_pull_roundtrip(repo, "box", guest)
        assert repo.slicer_json("status", "box")["vm_side"]["head"] == repo.git("rev-parse", "HEAD").strip()
        proc = repo.slicer("exec", "box", "--", "true", check=False)
        assert proc.returncode == 2 and "needs an ssh: or exec: address" in error_line(proc)
    finally:
        agent.stop()
    assert not os.path.exists(sockdir + "/agent.sock")
    proc = repo.slicer("push", "box", check=False)
    assert proc.returncode == 1
    assert error_line(proc).startswith("error: no socket at unix:%s/agent.sock" % sockdir)


def test_tcp_with_token(repo, guest, tmp_path):
    token_file = tmp_path / "agent-token"
    token_file.write_text("s3cret-token\n")
    agent = Listener("tcp:127.0.0.1:0", "--token-file", str(token_file))
    try:
        register(repo, "box", agent.address, guest, tokenFile=str(token_file))
        push_pull_roundtrip(repo, "box", guest)

        repo.git("config", "--unset", "slicer.box.tokenFile")
        proc = repo.slicer("push", "box", check=False)
        assert proc.returncode == 2
        assert "tcp addresses need a token" in error_line(proc)

        repo.git("config", "slicer.box.token", "wrong")
        proc = repo.slicer("push", "box", check=False)
        assert proc.returncode == 1
        assert "authentication failed" in error_line(proc) and "wrong or missing token" in error_line(proc)

        # A client that skips auth gets refused before the agent serves anything.
        host, port = agent.address.split(":")[1:]
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            conn = Connection(sock.makefile("rb"), sock.makefile("wb"))
            conn.send({"op": "hello", "protocol": 1})
            reply = conn.recv()
            assert reply["error"]["code"] == "auth-failed"
    finally:
        agent.stop()


def test_tcp_agent_refuses_to_start_without_token(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "git_slicer", "agent", "--listen", "tcp:127.0.0.1:0"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert proc.returncode == 2
    assert "needs a token" in proc.stderr.decode()


# -- hybrid vsock (Firecracker / Cloud Hypervisor) ---------------------------------------
def test_hybrid_vsock_through_muxer_double(repo, guest, sockdir):
    agent = Listener("unix:%s/guest-5000.sock" % sockdir)
    relay = FakeFirecrackerRelay(sockdir + "/vm.sock", {5000: sockdir + "/guest-5000.sock"}).start()
    try:
        register(repo, "fc", "hvsock:%s/vm.sock:5000" % sockdir, guest)
        push_pull_roundtrip(repo, "fc", guest)
        assert relay.connects and set(relay.connects) == {5000}

        repo.git("config", "slicer.fc.address", "hvsock:%s/vm.sock:5001" % sockdir)
        proc = repo.slicer("push", "fc", check=False)
        assert proc.returncode == 1
        assert "nothing listens on vsock port 5001" in error_line(proc)
    finally:
        relay.stop()
        agent.stop()
    repo.git("config", "slicer.fc.address", "hvsock:%s/vm.sock:5000" % sockdir)
    proc = repo.slicer("push", "fc", check=False)
    assert "no socket at the VM socket %s/vm.sock" % sockdir in error_line(proc)


def test_hybrid_vsock_times_out_when_muxer_is_silent(sockdir):
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(sockdir + "/silent.sock")
    silent.listen(1)
    try:
        start = time.monotonic()
        with pytest.raises(AgentFailed, match="timed out after 1s"):
            transport.hybrid_vsock_connect(sockdir + "/silent.sock", 5000, 1)
        assert time.monotonic() - start < 10
    finally:
        silent.close()


# -- exec and agentless guests -----------------------------------------------------------
def exec_address(home, path=GUEST_PATH):
    return "exec:env -i PATH=%s HOME=%s sh -c 'cd \"$HOME\" && exec \"$@\"' guest" % (path, home)


def test_exec_transport_ships_the_agent(repo, guest):
    register(repo, "box", exec_address(guest), guest)
    push_pull_roundtrip(repo, "box", guest)
    # The guest's python3 has no git_slicer: the agent that served push and pull was shipped.
    proc = repo.slicer("exec", "box", "--", "python3", "-c", "import git_slicer", check=False)
    assert proc.returncode == 1 and b"No module named 'git_slicer'" in proc.stderr
    assert repo.vm_git("box", "log", "-1", "--format=%s").strip() == "work in the VM"
    assert repo.vm_sh("box", "pwd").strip() == str(guest / "project")
    channel = transport.open_channel(transport.parse_address(exec_address(guest)), description="t")
    try:
        assert channel.shipped
        channel.conn.send({"op": "hello", "protocol": 1})
        assert channel.conn.recv_reply()["agent"] == "git-slicer-agent"
    finally:
        channel.close()


def test_an_address_vms_id_is_checked_by_exec_and_shell_and_adopted_only_when_neither_side_has_one(repo, guest):
    """A VM reached by address has no provider record: the id kept in the VM is all there is.
    exec and shell (which reach it without the agent) ask the agent first, as push does; a link
    saved before VMs had ids adopts one only from a VM that has none either."""
    import json
    register(repo, "box", exec_address(guest), guest)
    repo.slicer("push", "box")
    link_file = repo.path / ".git" / "slicer" / "links" / "box.json"
    id_file = guest / ".git-slicer" / "vm-id"
    first = id_file.read_text().strip()
    assert json.loads(link_file.read_text())["vm_id"] == first
    repo.slicer("exec", "box", "--", "true")
    id_file.write_text("another0vm\n")                   # another machine answers at that address now
    for args in (("exec", "box", "--", "touch", "ran"), ("shell", "box")):
        proc = repo.slicer(*args, check=False)
        assert proc.returncode == 1 and "link to VM box is stale" in error_line(proc), args
    assert not (guest / "project" / "ran").exists()
    id_file.write_text(first + "\n")
    link = json.loads(link_file.read_text())
    link["vm_id"] = ""                                   # a link saved before VMs had ids
    link_file.write_text(json.dumps(link))
    for args in (("push", "box"), ("exec", "box", "--", "touch", "ran")):
        proc = repo.slicer(*args, check=False)             # the VM has an id of its own: not adopted
        assert proc.returncode == 1 and "was made before VMs had ids" in error_line(proc), args
    assert not (guest / "project" / "ran").exists()
    id_file.unlink()                                     # neither side has one
    repo.slicer("exec", "box", "--", "true")
    assert not id_file.exists(), "exec gave the VM an id the link does not record"
    repo.write("notes.txt", "more\n")
    repo.slicer("push", "box")                           # the push does, and the link records it
    adopted = json.loads(link_file.read_text())["vm_id"]
    assert adopted and id_file.read_text().strip() == adopted


@pytest.mark.parametrize("missing", ["python3", "git"])
def test_agentless_guest_without_python_or_git(repo, guest, tmp_path, missing):
    bindir = tmp_path / "guest-bin"
    bindir.mkdir()
    for tool in ("sh", "env", "git", "python3"):
        if tool != missing:
            os.symlink(shutil.which(tool, path=GUEST_PATH), bindir / tool)
    register(repo, "box", exec_address(guest, bindir), guest)
    proc = repo.slicer("push", "box", check=False)
    assert proc.returncode == 1
    assert error_line(proc) == ("error: VM box: the guest has no %s (the agent needs python3 >= 3.9 and git on PATH)"
                                % missing)


FAKE_AGENT = r'''
import json, struct, sys
r, w = sys.stdin.buffer, sys.stdout.buffer
n = int(r.readline().split()[1]); r.read(n)          # skip the shipped agent
kind, size = struct.unpack(">cI", r.read(5)); r.read(size)
reply = json.dumps({"ok": True, "agent": "git-slicer-agent", "protocol": 99}).encode()
w.write(struct.pack(">cI", b"J", len(reply)) + reply); w.flush()
r.read()
'''


def test_wrong_version_no_agent_and_timeout_are_one_line(repo, guest, tmp_path):
    fake = tmp_path / "fake_agent.py"
    fake.write_text(FAKE_AGENT)
    register(repo, "old", "exec:%s %s" % (sys.executable, fake), guest)
    proc = repo.slicer("push", "old", check=False)
    assert "not a git-slicer agent speaking protocol 1" in error_line(proc)

    register(repo, "none", "exec:sh -c 'exit 3'", guest)
    proc = repo.slicer("push", "none", check=False)
    assert error_line(proc) == "error: VM none: sh exited with status 3"

    register(repo, "slow", "exec:sh -c 'sleep 30' sleeper", guest)
    repo.git("config", "slicer.connectTimeout", "1")
    repo.git("config", "slicer.handshakeTimeout", "1")
    start = time.monotonic()
    proc = repo.slicer("push", "slow", check=False)
    assert time.monotonic() - start < 15
    assert error_line(proc).startswith("error: VM slow: timed out after 2s waiting for the agent")


# -- ssh: a real sshd ------------------------------------------------------------------
SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)


@pytest.fixture
def sshd(tmp_path):
    """A real OpenSSH server on 127.0.0.1 that lets in only a key this test made."""
    if SSHD is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("openssh-server/client not installed (scripts/install-system-deps.sh)")
    if os.geteuid() != 0:
        pytest.skip("sshd needs root to switch to the test user")
    d = tmp_path / "sshd"
    d.mkdir()
    for name in ("host_key", "client_key", "other_key"):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)])
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    user = getpass.getuser()
    port = free_port()
    (d / "sshd_config").write_text("\n".join([
        "Port %d" % port, "ListenAddress 127.0.0.1", "HostKey %s" % (d / "host_key"),
        "PidFile %s" % (d / "sshd.pid"), "AuthorizedKeysFile %s" % (d / "authorized_keys"),
        "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes", "PermitRootLogin prohibit-password", "StrictModes no",
        "AllowUsers %s" % user, "LogLevel ERROR",
        # A pyenv in the test user's shell startup must not put an installed git-slicer on the
        # remote python path: the guest's python3 is the system one, without git_slicer.
        "SetEnv PYENV_VERSION=system", ""]))
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)     # sshd's privilege separation directory
    check = subprocess.run([SSHD, "-t", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
    if check.returncode != 0:
        pytest.skip("sshd refused the test config: %s" % check.stderr.decode().strip())
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.skip("sshd did not start: %s" % server.stderr.read().decode()[-300:])
            time.sleep(0.05)
    host_key = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text("[127.0.0.1]:%d %s %s\n" % (port, host_key[0], host_key[1]))

    def client_config(key):
        path = d / ("ssh_config_" + key)
        path.write_text("\n".join([
            "Host *", "  IdentityFile %s" % (d / key), "  IdentitiesOnly yes", "  IdentityAgent none",
            "  UserKnownHostsFile %s" % (d / "known_hosts"), "  GlobalKnownHostsFile /dev/null",
            "  StrictHostKeyChecking yes", "  LogLevel ERROR", ""]))
        return "ssh -F %s" % path
    yield {"port": port, "user": user, "ssh": client_config("client_key"), "other": client_config("other_key")}
    server.terminate()
    server.wait(10)
    server.stderr.close()


def test_ssh_push_pull_exec(repo, guest, sshd):
    repo.git("config", "slicer.sshCommand", sshd["ssh"])
    register(repo, "box", "ssh:%s@127.0.0.1:%d" % (sshd["user"], sshd["port"]), guest)
    push_pull_roundtrip(repo, "box", guest)
    # git-slicer is not installed on the remote side's python path: the agent was shipped.
    proc = repo.slicer("exec", "box", "--", "python3", "-c", "import git_slicer", check=False)
    assert proc.returncode == 1 and b"No module named 'git_slicer'" in proc.stderr
    assert repo.vm_sh("box", "pwd").strip() == str(guest / "project")
    assert repo.vm_status("box") == "?? notes.txt\n?? scratch.txt\n"
    repo.write("src/lib.py", "VALUE = 2\n")
    repo.commit("host change")
    assert repo.slicer_json("push", "box")["up_to_date"] is False
    assert repo.vm_git("box", "log", "-1", "--format=%s").strip() == "host change"


def test_ssh_commands_reuse_one_connection(repo, guest, sshd):
    """One ssh connection per host stays open for slicer.sshPersist seconds (ControlMaster):
    the commands after the first skip the handshake; 0 turns it off."""
    from git_slicer.transport import ssh_reuse_options
    repo.git("config", "slicer.sshCommand", sshd["ssh"])
    register(repo, "box", "ssh:%s@127.0.0.1:%d" % (sshd["user"], sshd["port"]), guest)
    options = ssh_reuse_options(60)
    control = [o for o in options if o.startswith("ControlPath=")][0]
    directory = os.path.dirname(control[len("ControlPath="):])
    assert stat.S_IMODE(os.lstat(directory).st_mode) == 0o700
    ssh = sshd["ssh"].split() + ["-o", control, "-p", str(sshd["port"]), "-l", sshd["user"]]

    def master() -> bool:
        return run(ssh + ["-O", "check", "127.0.0.1"], check=False).returncode == 0
    run(ssh + ["-O", "exit", "127.0.0.1"], check=False)
    repo.slicer("push", "box")
    assert master(), "no ssh connection was kept for the next command"
    assert repo.vm_sh("box", "echo reused") == "reused\n"
    repo.write("src/lib.py", "VALUE = 3\n")
    repo.commit("through the same connection")
    assert repo.slicer_json("push", "box")["up_to_date"] is False
    run(ssh + ["-O", "exit", "127.0.0.1"], check=False)
    repo.git("config", "slicer.sshPersist", "0")
    repo.write("src/lib.py", "VALUE = 4\n")
    repo.commit("a fresh connection")
    assert repo.slicer_json("push", "box")["up_to_date"] is False
    assert not master()


def test_ssh_provider_uses_host_names(repo, guest, sshd):
    repo.git("config", "slicer.provider", "ssh")
    repo.git("config", "slicer.sshCommand", sshd["ssh"])
    repo.git("config", "slicer.local-ssh.address", "ssh:%s@127.0.0.1:%d" % (sshd["user"], sshd["port"]))
    repo.git("config", "slicer.local-ssh.provider", "ssh")
    repo.git("config", "slicer.local-ssh.guestPath", str(guest / "project"))
    assert repo.slicer_json("push", "local-ssh")["provider"] == "ssh"
    assert [v["name"] for v in repo.slicer_json("vm", "list")] == ["local-ssh"]
    proc = repo.slicer("push", "--launch", check=False)
    assert proc.returncode == 2 and "the ssh provider cannot launch VMs" in error_line(proc)


def test_ssh_failures_are_one_line(repo, guest, sshd):
    register(repo, "box", "ssh:%s@127.0.0.1:%d" % (sshd["user"], sshd["port"]), guest)
    repo.git("config", "slicer.sshCommand", sshd["other"])
    proc = repo.slicer("push", "box", check=False)
    assert proc.returncode == 1
    assert error_line(proc).startswith("error: VM box: ssh authentication failed for 127.0.0.1:%d" % sshd["port"])
    repo.git("config", "slicer.box.address", "ssh:%s@127.0.0.1:%d" % (sshd["user"], free_port()))
    proc = repo.slicer("push", "box", check=False)
    assert error_line(proc).startswith("error: VM box: ssh: connection refused by 127.0.0.1:")


def test_agent_stderr_is_capped_and_drained(tmp_path):
    """A VM that floods stderr neither blocks the agent nor grows host memory or temp space."""
    from git_slicer.transport import ProcessChannel, StderrTail
    script = "import sys\nfor _ in range(200):\n    sys.stderr.write('x' * 65536)\nsys.stderr.write('last words\\n')\n"
    channel = ProcessChannel([sys.executable, "-c", script], description="flooding agent")
    assert channel.proc.wait(30) == 0            # never blocked on a full stderr pipe
    tail = channel.stderr_tail(100000)
    assert tail.endswith("last words") and len(tail) <= StderrTail.CAP
    channel.close()
