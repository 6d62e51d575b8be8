import os
import sys

import click

from .common import vm_argument, worktree_at


@click.command("exec", short_help="Run a command in the VM's repository.", context_settings={"help_option_names": ["-h", "--help"],
                                         "ignore_unknown_options": True})
@vm_argument(required=True)
@click.option("--cwd", "cwd", help="Directory in the VM, relative to the synced repository.")
@click.option("-C", "path", default=".", help="Host worktree whose link gives the repository path.")
@click.argument("argv", nargs=-1, type=click.UNPROCESSED, required=True)
def command(vm, cwd, path, argv):
    """Run CMD in the VM, in the synced repository; stdout, stderr and the exit code pass through.

    Usage: git slicer exec VM [--cwd DIR] -- CMD [ARGS...]
    """
    from ..config import Settings
    from ..errors import NotARepository
    from ..links import LinkStore, check_vm_name
    from ..target import find_vm, provider_for
    check_vm_name(vm)
    if argv and argv[0] == "--":
        argv = argv[1:]
    settings = Settings()
    link = None
    try:
        link = LinkStore.of(worktree_at(path)).get(vm)
    except NotARepository:
        pass
    provider = provider_for(settings, vm, link)
    machine = find_vm(provider, vm)
    base = link.guest_path if link and link.guest_path.startswith("/") else ""
    where = os.path.join(base, cwd) if cwd and base else (cwd or base)
    code = provider.exec(machine, list(argv), where, interactive=sys.stdin.isatty())
    raise SystemExit(code)
