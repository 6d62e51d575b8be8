from conftest import slicer


def test_first_push_reproduces_host_status(launched):
    repo, vm = launched
    assert repo.vm_status(vm) == repo.status()
    assert repo.vm_git(vm, "rev-parse", "HEAD") == repo.git("rev-parse", "HEAD")


def test_version_and_help(tmp_path):
    assert b"git-slicer" in slicer(tmp_path, "--version").stdout
    assert b"push" in slicer(tmp_path, "-h").stdout
