"""Warnings and progress for the user, on stderr. The core reports through here, never click."""

from __future__ import annotations

import sys

_warned = set()
quiet = False
verbose = False


def warn(message: str) -> None:
    if not quiet:
        sys.stderr.write("warning: %s\n" % message)


def info(message: str) -> None:
    """Detail shown with -v."""
    if verbose and not quiet:
        sys.stderr.write("%s\n" % message)


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
        from .config import Settings      # slicer.progress (env GIT_SLICER_PROGRESS wins)
        setting = Settings().get("slicer.progress")
    setting = setting or "auto"
    if not progress_enabled(setting):
        return _NoBar()
    from tqdm import tqdm
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


def attach(conn, desc: str):
    """Show a byte-count bar for the streams on `conn`; returns the bar (close it when done)."""
    bar = progress(desc=desc)
    if not isinstance(bar, _NoBar):
        conn.on_progress = bar.update
    return bar
