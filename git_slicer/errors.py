"""Errors the core raises; the CLI maps each to one line on stderr and an exit code."""


class SlicerError(Exception):
    """A failure the user can act on. `exit_code` 1 = failure, 2 = usage."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str = "", details=None):
        super().__init__(message)
        self.hint = hint
        self.details = details or {}


class UsageError(SlicerError):
    exit_code = 2


class NotARepository(SlicerError):
    pass


class NotLinked(UsageError):
    """The worktree has no agreed state with the VM (never pushed, or its first push never
    reached the VM)."""


class VMNotFound(SlicerError):
    pass


class AgentFailed(SlicerError):
    """The agent could not be reached or answered with an error (`code`: the agent's error code,
    when it answered with one)."""

    def __init__(self, message: str, *, hint: str = "", details=None, code: str = ""):
        super().__init__(message, hint=hint, details=details)
        self.code = code


class OperationInProgress(SlicerError):
    """git is in the middle of a rebase, merge, cherry-pick or revert in the worktree."""


class WouldLoseWork(SlicerError):
    """An operation stopped before writing because it would destroy someone's work."""


class UnsafeInput(SlicerError):
    """Something the VM sent failed validation; nothing was written."""


class StaleLink(SlicerError):
    """A link whose VM is gone, or whose name now belongs to another VM: nothing is sent."""


class UnprovenLink(StaleLink):
    """A link saved before VMs had ids, to a VM that has one of its own: it may be the linked VM
    or another of that name, and nothing tells which; nothing is sent."""
