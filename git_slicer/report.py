"""Warnings and progress for the user, on stderr. The core reports through here, never click."""

from __future__ import annotations

import os
import sys

_warned = set()
quiet = False
verbose = False


def escape(message: str) -> str:
    """One line safe for a terminal: control and other non-printable characters (a VM's
    escape sequences, newlines that would forge a second line) shown as \\xNN."""
    from .wire.paths import display     # lazy: report is imported by the CLI at start-up
    return display(str(message))


def terminal_text(text: str) -> str:
    """Text for a terminal, newlines and tabs kept, every other control character escaped."""
    return "".join(c if c in "\n\t" or c.isprintable() else
                   ("\\x%02x" % ord(c) if ord(c) < 256 else "\\u%04x" % ord(c)) for c in text)


def summarize(paths, limit: int = 20, shown=None) -> list:
    """At most `limit` escaped paths, the last one followed by "(and N more)" (text output;
    --json keeps them all)."""
    shown = shown or escape
    lines = [shown(p) for p in paths[:limit]]
    if len(paths) > limit:
        lines[-1] += " (and %d more)" % (len(paths) - limit)
    return lines


def warn(message: str) -> None:
    if not quiet:
        sys.stderr.write("warning: %s\n" % escape(message))


def info(message: str) -> None:
    """Detail shown with -v."""
    if verbose and not quiet:
        sys.stderr.write("%s\n" % escape(message))


def warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warn(message)


def progress_enabled(setting: str = "auto") -> bool:
    if quiet or setting == "never":
        return False
    return setting == "always" or sys.stderr.isatty()


def progress(total=None, desc: str = "", unit: str = "B", setting: str = None):
    """A tqdm bar on stderr when enabled (shown only once work lasts over a second), else a
    no-op object with the same methods."""
    if setting is None and not quiet:
        from .config import Settings      # slicer.progress (env GIT_SLICER_PROGRESS wins); lazy: CLI start-up
        setting = os.environ.get("GIT_SLICER_PROGRESS", "")
        if setting not in ("auto", "always", "never"):     # else Settings reads config, or says what is wrong
            setting = Settings().get("slicer.progress")
    setting = setting or "auto"
    if not progress_enabled(setting):
        return _NoBar()
    from tqdm import tqdm               # lazy: ~80 ms, only when a bar is drawn
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr, leave=False,
                mininterval=0.2, delay=0 if setting == "always" else 1.0)


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def attach(conn, desc: str, setting: str = None):
    """Show a byte-count bar for the streams on `conn`; returns the bar (close it when done)."""
    bar = progress(desc=desc, setting=setting)
    if not isinstance(bar, _NoBar):
        conn.on_progress = bar.update
    return bar
