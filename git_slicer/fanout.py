"""Push one worktree to several VMs at once: every linked VM (`--all`) or N fresh ones
(`--launch --count N`). Each VM gets its own connection; one failing does not stop the others."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from .errors import SlicerError, UsageError
from .links import LinkStore
from .push import PushOptions, push

MAX_PARALLEL = 8


def push_many(worktree, options: PushOptions, all_linked: bool = False, count: int = None) -> dict:
    if all_linked and (options.launch or options.vm):
        raise UsageError("--all pushes to the linked VMs; it takes no VM name and no --launch")
    if count is not None:
        if count < 1:
            raise UsageError("--count must be at least 1")
        if not options.launch or options.vm:
            raise UsageError("--count N launches N new VMs: use it with --launch and no VM name")
        jobs = [replace(options) for _ in range(count)]
    else:
        names = [link.vm for link in LinkStore.of(worktree).all()]
        if not names:
            raise UsageError("this worktree is not linked to any VM", hint="git slicer push --launch")
        jobs = [replace(options, vm=name) for name in names]

    def run(job):
        try:
            return {"ok": True, **push(worktree, job).to_json()}
        except SlicerError as exc:
            return {"ok": False, "vm": job.vm, "error": str(exc), "kind": type(exc).__name__, "hint": exc.hint}

    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(jobs))) as pool:
        results = list(pool.map(run, jobs))
    return {"results": results, "failed": [r.get("vm") for r in results if not r["ok"]]}
