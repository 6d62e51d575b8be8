"""The `git slicer` command line: click commands only. Each parses, calls the core, renders
text or --json, and lets `main` map errors to one line on stderr and an exit code."""

from __future__ import annotations

import os
import sys

import click

from .. import __version__
from ..errors import SlicerError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="git-slicer", message="%(prog)s %(version)s")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors.")
def cli(quiet):
    """Give a coding agent its own copy of a git worktree in an isolated VM,
    and bring its work home safely."""
    from .. import report
    report.quiet = quiet


def _register():
    from . import agent, exec_, list_, pull, push, status, vm
    for module in (push, pull, list_, status, exec_, vm, agent):
        cli.add_command(module.command)


_register()


def main(argv=None) -> None:
    try:
        code = cli.main(args=argv, prog_name="git slicer", standalone_mode=False)
    except click.UsageError as exc:
        exc.show()
        code = 2
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except click.exceptions.Abort:
        sys.stderr.write("aborted\n")
        code = 1
    except SlicerError as exc:
        sys.stderr.write("error: %s\n" % exc)
        if exc.hint:
            sys.stderr.write("hint: %s\n" % exc.hint)
        code = exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        code = 130
    except BrokenPipeError:
        code = 1
    except Exception as exc:  # a bug: one line, the traceback only on request
        if os.environ.get("GIT_SLICER_DEBUG"):
            raise
        sys.stderr.write("error: internal error: %s: %s (set GIT_SLICER_DEBUG=1 for a traceback)\n"
                         % (type(exc).__name__, exc))
        code = 1
    sys.stdout.flush()
    sys.exit(code if isinstance(code, int) else 0)
