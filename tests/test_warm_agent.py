"""The local VM's warm agent (providers/local_agent.py): one agent per VM kept between commands,
reached on a 0600 socket the VM cannot see, with a token; replaced when it died or runs other
code; ended by its idle timeout, `vm stop` and `vm rm`; and never the cause of a wrong answer."""

import json
import os
import socket
import stat
import subprocess
import threading
import time

import pytest

from conftest import HAVE_BWRAP, SLICER
from hostile_agent import install, vm_home

pytestmark = pytest.mark.skipif(not HAVE_BWRAP, reason="the warm agent runs in the bubblewrap sandbox")


def agent_info(vm):
    path = vm_home(vm).parent / "agent.json"
    return json.loads(path.read_text()) if path.exists() else None


def alive(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid, "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def wait_dead(pid: int, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_commands_share_one_agent_on_a_private_socket(launched):
    repo, vm = launched
    first = agent_info(vm)
    assert first and alive(first["pid"])
    repo.write("src/app.py", "print('edit')\n")
    repo.slicer("push", vm)
    repo.slicer("status", vm)
    assert agent_info(vm)["pid"] == first["pid"], "a second command started another agent"
    directory = vm_home(vm).parent
    for leaf in ("agent.sock", "agent.json"):
        assert stat.S_IMODE(os.lstat(directory / leaf).st_mode) == 0o600, leaf
    assert stat.S_ISSOCK(os.lstat(directory / "agent.sock").st_mode)
    # Inside, the VM has its home and nothing else of the directory holding the socket and token.
    mounts = repo.vm_sh(vm, "cat /proc/self/mountinfo")
    assert "agent" not in mounts.replace("/home/agent", "").replace(str(directory / "home"), "")
    assert repo.vm_sh(vm, "find / \\( -name agent.sock -o -name agent.json \\) -not -path '/proc/*' 2>/dev/null; echo end").split() == ["end"]


def test_a_wrong_token_is_refused(launched):
    from git_slicer.wire.framing import Connection
    repo, vm = launched
    sock = socket.socket(socket.AF_UNIX)
    fd = os.open(vm_home(vm).parent, os.O_PATH)   # a short name: unix socket paths are limited
    try:
        sock.connect("/proc/self/fd/%d/agent.sock" % fd)
    finally:
        os.close(fd)
    conn = Connection(sock.makefile("rb"), sock.makefile("wb"))
    conn.send({"op": "auth", "token": "guess"})
    reply = conn.recv()
    assert reply.get("ok") is not True and reply["error"]["code"] == "auth-failed"
    sock.close()
    repo.slicer("status", vm)                    # the agent serves the right token still


def test_a_killed_agent_is_replaced_and_a_recycled_pid_is_never_signalled(launched):
    repo, vm = launched
    first = agent_info(vm)
    os.kill(first["pid"], 9)                     # the whole sandbox, as a crashed VM
    assert wait_dead(first["pid"])
    repo.write("src/app.py", "print('after the crash')\n")
    repo.slicer("push", vm)
    second = agent_info(vm)
    assert second["pid"] != first["pid"] and alive(second["pid"])
    assert repo.vm_sh(vm, "cat src/app.py") == "print('after the crash')\n"
    # A record naming a live process that is not the agent (another start time): left alone.
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        info = dict(second, pid=sleeper.pid)
        (vm_home(vm).parent / "agent.json").write_text(json.dumps(info))
        os.kill(second["pid"], 9)
        assert wait_dead(second["pid"])
        repo.slicer("status", vm)
        assert sleeper.poll() is None, "a process that is not the agent was killed"
        assert agent_info(vm)["pid"] not in (sleeper.pid, second["pid"])
    finally:
        sleeper.kill()
        sleeper.wait()


def test_vm_stop_and_vm_rm_end_the_agent(launched):
    repo, vm = launched
    pid = agent_info(vm)["pid"]
    assert repo.slicer_json("vm", "stop", vm)["name"] == vm
    assert wait_dead(pid)
    assert agent_info(vm) is None
    repo.slicer("status", vm)                    # the next command starts one again
    pid = agent_info(vm)["pid"]
    repo.slicer("vm", "rm", vm)
    assert wait_dead(pid)


def test_the_agent_ends_when_idle_and_the_next_command_starts_another(launched):
    repo, vm = launched
    repo.git("config", "slicer.local.agentIdle", "1")
    pid = agent_info(vm)["pid"]
    os.kill(pid, 9)
    assert wait_dead(pid)
    repo.slicer("status", vm)                    # starts one with a 1 s idle timeout
    pid = agent_info(vm)["pid"]
    assert wait_dead(pid), "the agent did not end after its idle time"
    # Commands that race the agent's idle exit are never refused: they start another.
    for pause in (0.0, 0.9, 1.0, 1.1, 1.2, 0.95, 1.05):
        time.sleep(pause)
        repo.slicer("status", vm)


def test_an_agent_running_other_code_is_replaced(launched):
    repo, vm = launched
    pid = agent_info(vm)["pid"]
    install(repo, vm, None, env={"NOTHING": "1"})       # the real agent behind another python path
    repo.slicer("status", vm)
    assert wait_dead(pid), "the stale agent was left running"
    assert agent_info(vm)["pid"] != pid


def test_no_warm_agent_with_agent_idle_zero(repo):
    repo.git("config", "slicer.local.agentIdle", "0")
    vm = repo.slicer_json("push", "--launch")["vm"]
    assert agent_info(vm) is None
    repo.write("src/app.py", "print('cold')\n")
    repo.slicer("push", vm)
    assert repo.vm_sh(vm, "cat src/app.py") == "print('cold')\n"


def test_commands_starting_the_agent_at_once_share_one(launched):
    repo, vm = launched
    repo.slicer("vm", "stop", vm)
    results = []

    def status():
        results.append(subprocess.run(SLICER + ["status", vm, "--json"], cwd=repo.path,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    threads = [threading.Thread(target=status) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.returncode for r in results] == [0] * 4, [r.stderr for r in results]
    pid = agent_info(vm)["pid"]
    sandboxes = [p for p in os.listdir("/proc") if p.isdigit() and _sandbox_of(int(p), vm)]
    assert len(sandboxes) == 1 and alive(pid)


def _argv(pid: int) -> list:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return fh.read().split(b"\0")
    except OSError:
        return []


def _sandbox_of(pid: int, vm: str) -> bool:
    """The outer bubblewrap process of a listening agent with this VM's home bound in (its
    sandbox's first process runs the same command line, as its child)."""
    argv = _argv(pid)
    if not (argv and argv[0].endswith(b"bwrap") and b"--listen" in argv and str(vm_home(vm)).encode() in argv):
        return False
    with open("/proc/%d/stat" % pid, "rb") as fh:
        parent = int(fh.read().rsplit(b")", 1)[1].split()[1])
    return not _argv(parent)[:1] or not _argv(parent)[0].endswith(b"bwrap")


def test_the_agent_ends_when_its_vm_directory_is_deleted(launched):
    """A VM directory removed by hand (or a test's tmp dir cleaned up) leaves no agent behind."""
    import shutil
    repo, vm = launched
    pid = agent_info(vm)["pid"]
    shutil.rmtree(vm_home(vm).parent)
    assert wait_dead(pid), "the agent outlived its VM's home"


def test_a_remade_vm_repository_is_never_taken_for_the_old_one(launched):
    """The warm agent remembers each repository's object format between requests; a repository
    made again at the same path in another format is seen as what it is now."""
    repo, vm = launched
    assert repo.slicer("status").returncode == 0            # the agent has seen the sha1 repository
    repo.vm_sh(vm, "cd ~ && rm -rf %s && git init -q --object-format=sha256 %s" % ((repo.path.name,) * 2))
    proc = repo.slicer("push", check=False)
    assert proc.returncode != 0
    assert b"uses sha256 objects, the host's uses sha1" in proc.stderr, proc.stderr


def test_a_niced_command_is_niced_in_the_vm_too_and_only_that_command(launched):
    """The hooks' runner pushes at niceness 10 so the user's own work goes first; the VM's side
    of that push yields too (its thread of the warm agent and the git it starts), while the
    agent's next connection runs as before."""
    repo, vm = launched
    repo.vm_sh(vm, "printf '#!/bin/sh\\ncut -d\" \" -f19 /proc/$$/stat >> $HOME/nice.log\\n' "
                   "> .git/hooks/reference-transaction && chmod +x .git/hooks/reference-transaction")
    log = vm_home(vm) / "nice.log"

    def push(*prefix):
        repo.write("a.txt", "%s\n" % time.monotonic())
        repo.commit("host")
        log.write_text("")
        subprocess.run([*prefix, *SLICER, "push", vm], cwd=repo.path, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return set(log.read_text().split())

    assert push() == {"0"}
    assert push("nice", "-n", "7") == {"7"}
    assert push() == {"0"}
