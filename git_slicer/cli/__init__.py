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
@click.option("-v", "--verbose", is_flag=True, help="Print more detail on stderr.")
def cli(quiet, verbose):
    """Give a coding agent its own copy of a git worktree in an isolated VM,
    and bring its work home safely."""
    from .. import report
    report.quiet = report.quiet or quiet
    report.verbose = report.verbose or verbose


def _set_report(ctx, param, value):
    from .. import report
    if value:
        setattr(report, param.name, True)


def _add_output_options(command) -> None:
    """Every command also takes -q/--quiet and -v/--verbose (git users put them after the verb)."""
    names = {opt for param in command.params for opt in getattr(param, "opts", [])}
    for flag, name, text in (("-q", "quiet", "Print only errors."), ("-v", "verbose", "Print more detail.")):
        if flag not in names:
            command.params.append(click.Option([flag, "--" + name], is_flag=True, expose_value=False,
                                               is_eager=True, callback=_set_report, help=text))
    for sub in getattr(command, "commands", {}).values():
        _add_output_options(sub)


def _register():
    from . import agent, exec_, hooks, list_, pull, push, status, vm
    for module in (push, pull, list_, status, exec_, vm, agent, hooks):
        cli.add_command(module.command)
    from . import completion, review, worktree
    for command in review.commands:
        cli.add_command(command)
    cli.add_command(worktree.command)
    cli.add_command(completion.command)
    for command in cli.commands.values():
        _add_output_options(command)


_register()


def _json_error(argv, message: str, kind: str, code: int, hint: str = "", details=None) -> None:
    """With --json among the options (not in a command `exec` runs after `--`), the failure as
    one document on stdout too: scripts and agents read stdout."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--json" not in (args[:args.index("--")] if "--" in args else args):
        return
    import json
    sys.stdout.write(json.dumps({"ok": False, "error": {"message": message, "hint": hint, "kind": kind,
                                                        "exit_code": code, "details": details or {}}},
                                indent=2, sort_keys=True, default=str) + "\n")


def main(argv=None) -> None:
    try:
        code = cli.main(args=argv, prog_name="git slicer", standalone_mode=False,
                        complete_var="_GIT_SLICER_COMPLETE")
    except click.UsageError as exc:
        exc.show()
        code = 2
        _json_error(argv, exc.format_message(), "UsageError", code)
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
        _json_error(argv, exc.format_message(), type(exc).__name__, code)
    except click.exceptions.Abort:       # click's form of Ctrl-C
        sys.stderr.write("interrupted\n")
        code = 130
    except SlicerError as exc:
        from ..report import escape
        sys.stderr.write("error: %s\n" % escape(exc))
        if exc.hint:
            sys.stderr.write("hint: %s\n" % escape(exc.hint))
        code = exc.exit_code
        _json_error(argv, str(exc), type(exc).__name__, code, exc.hint, exc.details)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        code = 130
    except BrokenPipeError:
        code = 1
    except Exception as exc:  # a bug: one line, the traceback only on request
        if os.environ.get("GIT_SLICER_DEBUG"):
            raise
        from ..report import escape
        sys.stderr.write("error: internal error: %s: %s (set GIT_SLICER_DEBUG=1 for a traceback)\n"
                         % (type(exc).__name__, escape(exc)))
        code = 1
        _json_error(argv, "internal error: %s: %s" % (type(exc).__name__, exc), "InternalError", code)
    sys.stdout.flush()
    sys.exit(code if isinstance(code, int) else 0)
