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
