"""Hostile VM content (real git and the real agent in the VM): ignore files the VM changes must
never widen what a push sends (SECURITY.md, guarantee 9), and an ignore file the host could not
read safely never lands.

Each case runs a script in the VM, then pulls: the pull is refused with one clear line naming
the host paths push would start sending, and nothing on the host changes (only objects may have
arrived in the object store, which push never sends back).
"""

import re

import pytest

HOST_SECRETS = {".env": "TOKEN=1\n", "key.pem": "PEM\n", "build/out.bin": "bin\n", ".cache": "c\n",
                "sub/local.key": "k\n"}


@pytest.fixture
def guarded(repo):
    repo.write(".slicerignore", ".env\n*.pem\n")
    repo.write(".gitignore", "build/\n.cache\n*.key\n")
    repo.write("sub/keep.txt", "kept\n")
    repo.commit("ignore files")
    for path, text in HOST_SECRETS.items():
        repo.write(path, text)
    vm = repo.slicer_json("push", "--launch")["vm"]
    assert repo.vm_sh(vm, "ls -a; ls -a build sub 2>&1 || true").count(".env") == 0
    return repo, vm


WIDENING = {
    "slicerignore-committed-without-env": ("printf '*.pem\\n' > .slicerignore && git commit -qam x", [".env"]),
    "slicerignore-uncommitted-without-pem": ("printf '.env\\n' > .slicerignore", ["key.pem"]),
    "slicerignore-deleted": ("git rm -q .slicerignore && git commit -qm x", [".env", "key.pem"]),
    "slicerignore-negation": ("printf '!.env\\n' >> .slicerignore", [".env"]),
    "gitignore-negation": ("printf '!build/\\n' >> .gitignore && git commit -qam x", ["build/"]),
    "gitignore-deleted": ("rm .gitignore", [".cache", "build/", "sub/local.key"]),
    "gitignore-nested-negation": ("printf '!local.key\\n' > sub/.gitignore", ["sub/local.key"]),
    "gitignore-replaced-by-symlink": ("rm .gitignore && ln -s /dev/zero .gitignore",
                                      [".cache", "build/", "sub/local.key"]),
}

UNREADABLE = {
    "slicerignore-symlink-to-dev-zero": ("rm .slicerignore && ln -s /dev/zero .slicerignore", "symlink"),
    "slicerignore-bad-pattern": ("printf '.env\\n*.pem\\n!\\n' > .slicerignore", r"\.slicerignore line 3"),
    "slicerignore-too-big": ("head -c 2000000 /dev/zero | tr '\\0' 'a' > .slicerignore", "larger than"),
}


def refused(repo, vm, expect, *args):
    before = repo.fingerprint(skip=(".git/objects",))
    proc = repo.slicer("pull", vm, *args, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert re.search(expect, err), err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1, err
    assert "internal error" not in err and "Traceback" not in err, err
    assert repo.fingerprint(skip=(".git/objects",)) == before, "the host changed: " + err
    return err


@pytest.mark.parametrize("case", sorted(WIDENING))
def test_vm_ignore_changes_never_widen_what_push_sends(guarded, case):
    repo, vm = guarded
    script, exposed = WIDENING[case]
    repo.vm_sh(vm, script)
    err = refused(repo, vm, "push would send host files it keeps back now")
    named = err.split("keeps back now: ", 1)[1].split("; nothing was written")[0].split(", ")
    assert named == exposed, err
    assert "--accept-ignore-changes" in err


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_vm_ignore_file_the_host_cannot_read_never_lands(guarded, case):
    repo, vm = guarded
    script, expect = UNREADABLE[case]
    repo.vm_sh(vm, script)
    refused(repo, vm, expect)
    refused(repo, vm, expect, "--accept-ignore-changes")


def test_narrowing_and_unrelated_changes_pull_as_usual(guarded):
    repo, vm = guarded
    repo.vm_sh(vm, "printf '.env\\n*.pem\\nlogs/\\n' > .slicerignore && printf 'x\\n' >> .gitignore "
                   "&& git commit -qam narrower && echo hi > new.txt")
    result = repo.slicer_json("pull", vm)
    assert result["fast_forward"] and "exposed_by_ignore_changes" not in result
    assert (repo.path / ".slicerignore").read_text() == ".env\n*.pem\nlogs/\n"


def test_the_user_can_accept_the_change_on_the_host(guarded):
    repo, vm = guarded
    repo.vm_sh(vm, "printf '*.pem\\n' > .slicerignore && git commit -qam 'share .env'")
    proc = repo.slicer("pull", vm, "--accept-ignore-changes")
    assert "push now also sends .env" in proc.stdout.decode()
    assert (repo.path / ".slicerignore").read_text() == "*.pem\n"
    repo.slicer("push", vm)
    assert repo.vm_sh(vm, "cat .env") == "TOKEN=1\n"          # the user chose to share it
