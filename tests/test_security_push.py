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


def test_33_file_changing_during_push_is_never_torn(launched):
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
                got = repo.vm_sh(vm, "sha256sum big.bin").split()[0]
                assert got in [hashlib.sha256(v).hexdigest() for v in versions], "torn file in the VM"
                outcomes.append("whole")
            else:
                assert "changed" in err and "internal error" not in err, err
                outcomes.append("refused")
    finally:
        stop.set()
        thread.join()
    assert outcomes
