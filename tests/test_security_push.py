"""Push leaks nothing (cases 30-33 in SECURITY.md): never .git internals, credentials,
.slicerignore'd files or the targets of symlinks; FIFOs and sockets are skipped without blocking;
a file changing during a push arrives whole or the push fails - never torn."""

import hashlib
import os
import socket
import threading

SECRET = "s3cr3t-token-4f9a"


def vm_grep(repo, vm, needle):
    """Every file in the VM's home (its disk) that contains `needle`, links not followed."""
    return repo.vm_sh(vm, "grep -rl --exclude-dir=.hostile -e '%s' ~ || true" % needle).split()


def test_30_32_secrets_never_leave_the_host(repo, hermetic_seal):
    aws = hermetic_seal / ".aws"
    aws.mkdir()
    (aws / "credentials").write_text("aws_secret_access_key = %s\n" % SECRET)
    os.symlink(str(aws), repo.path / "secrets")                 # 30: link to a secret directory
    os.symlink(str(aws / "credentials"), repo.path / "creds")
    repo.write(".env", "TOKEN=%s\n" % SECRET)                    # 32: slicerignored
    repo.write(".slicerignore", ".env\n")
    repo.git("config", "credential.helper", "store")
    repo.git("remote", "add", "origin", "https://user:%s@example.com/o/r.git" % SECRET)
    repo.git("config", "http.extraHeader", "Authorization: Bearer %s" % SECRET)
    (repo.path / ".git" / "hooks" / "pre-commit").write_text("#!/bin/sh\n# %s\n" % SECRET)
    (hermetic_seal / ".git-credentials").write_text("https://user:%s@example.com\n" % SECRET)
    vm = repo.slicer_json("push", "--launch")["vm"]
    assert vm_grep(repo, vm, SECRET) == []
    assert repo.vm_sh(vm, "readlink secrets").strip() == str(aws)
    assert repo.vm_sh(vm, "test -e .env && echo yes || echo no").strip() == "no"
    assert repo.vm_sh(vm, "git remote get-url origin").strip() == "https://example.com/o/r.git"


def test_31_fifo_and_socket_are_skipped_without_blocking(repo):
    os.mkfifo(repo.path / "pipe")
    cwd = os.getcwd()
    os.chdir(repo.path)                      # a socket path must be short
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind("sock")
    finally:
        os.chdir(cwd)
    try:
        repo.write("ok.txt", "fine\n")
        result = repo.slicer_json("push", "--launch")
        vm = result["vm"]
        assert repo.vm_sh(vm, "cat ok.txt").strip() == "fine"
        assert repo.vm_sh(vm, "ls -a").split().count("pipe") == 0
        assert repo.vm_sh(vm, "ls -a").split().count("sock") == 0
    finally:
        sock.close()


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_agent_never_applies_a_file_that_differs_from_the_manifest(tmp_path):
    """The end-to-end check on the VM's side: a push whose file stream carries other bytes than
    the blob id its overlay announces is refused ("corrupt") and nothing of it is applied. (The
    agent hashes each file as it stages it.) Driven with a real agent over a pipe."""
    import sys
    from git_slicer.session import AgentSession
    from git_slicer.transport import ProcessChannel
    from git_slicer.wire import tarstream
    from conftest import Repo
    vm_repo = Repo(tmp_path / "vm")
    vm_repo.path.mkdir()
    vm_repo.git("init", "-q", "-b", "main")
    vm_repo.write("README.md", "hello\n")
    commit = vm_repo.commit("initial")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_bytes(b"the bytes sent\n")
    announced = git_blob_id(b"the bytes announced\n")
    channel = ProcessChannel([sys.executable, "-m", "git_slicer.agent", "--stdio"], env=dict(os.environ))
    session = AgentSession(channel, "t")
    session.hello()
    ready = session.push(str(vm_repo.path), push_id="p1", branch="main", commit=commit, object_format="sha1",
                         overlay={"index": {}, "files": {"a.txt": ["100644", announced]}}, reuse=[], extra=[],
                         pack=False, tar=True, shallow=[], expect=None, config={}, remotes={}, excludes=[])
    assert ready.get("ready") is True
    session.conn.send_stream(tarstream.file_stream(str(tmp_path / "src"), {}, extra=["a.txt"]))
    reply = session.conn.recv()
    assert reply["ok"] is False and reply["error"]["code"] == "corrupt", reply
    assert not (vm_repo.path / "a.txt").exists() and vm_repo.status() == ""
    session.close()
    channel.proc.wait(10)


def test_33b_file_changed_between_the_scan_and_the_send_is_not_sent(launched):
    """The push announces a file's blob id from its scan, then sends it: a file that changed in
    between (same size, other bytes) fails the push; the VM never gets the old bytes as if they
    were still the file's, nor the new ones under the old blob id."""
    from hostile_agent import run_paused
    repo, vm = launched
    target = repo.path / "big.bin"
    target.write_bytes(b"A" * (3 * 1024 * 1024))

    def rewrite_in_place():                   # after the scan: same size, other bytes
        with open(target, "r+b") as fh:
            fh.seek(2 * 1024 * 1024)
            fh.write(b"B")
    proc, err = run_paused(repo, vm, "pause-push", ["push", vm], rewrite_in_place)
    assert proc.returncode != 0 and b"big.bin changed while it was being sent" in err, err
    assert "big.bin" not in repo.vm_sh(vm, "ls")


def test_33_file_changing_during_push_is_never_torn(launched):
    """A file rewritten in place while pushes run. The host's own file may be half one version
    and half the other when the push scans it (the writer can be descheduled mid-rewrite for
    longer than a whole push): then that is what the host announced, and what must arrive. So
    the check is exact: a push that succeeds leaves in the VM the very bytes the host announced
    (the VM's status does not differ from the host's scan, and the VM's bytes hash to the blob
    id recorded as agreed); a push that fails says the file changed while it was being sent."""
    import json
    from hostile_agent import vm_home
    repo, vm = launched
    size = 4 * 1024 * 1024
    versions = [bytes([65 + i]) * size for i in range(2)]
    target = repo.path / "big.bin"
    target.write_bytes(versions[0])
    stop = threading.Event()

    def churn():                              # rewrite the file in place, over and over
        i = 0
        with open(target, "r+b", buffering=0) as fh:
            while not stop.is_set():
                i ^= 1
                fh.seek(0)
                for start in range(0, size, 65536):
                    fh.write(versions[i][start:start + 65536])
    thread = threading.Thread(target=churn)
    thread.start()
    outcomes = []
    try:
        for _ in range(4):
            proc = repo.slicer("push", vm, "--force", check=False)
            err = proc.stderr.decode()
            if proc.returncode == 0:
                assert "differs" not in err, "the VM did not get what the host announced: " + err
                link = json.loads((repo.path / ".git" / "slicer" / "links" / ("%s.json" % vm)).read_text())
                agreed = link["agreed_overlay"]["files"]["big.bin"][1]
                got = (vm_home(vm) / repo.path.name / "big.bin").read_bytes()
                assert git_blob_id(got) == agreed, "torn file in the VM"
                outcomes.append("whole" if got in versions else "as announced")
            else:
                assert "big.bin changed while it was being sent" in err and "internal error" not in err, err
                outcomes.append("refused")
    finally:
        stop.set()
        thread.join()
    assert outcomes
