"""`git-remote-slicer`: a git remote helper so `git fetch slicer::VM` (or a remote whose URL is
`slicer://VM[/PATH]`) fetches a VM's branches, read-only, through the same quarantine as pull.

git runs `git-remote-slicer <remote> <url>` and talks on stdin/stdout (gitremote-helpers(7)):
we offer `list` and `fetch`; objects are imported by the pull machinery (quarantined,
validated) and git itself then updates the refs the user asked for.
"""

from __future__ import annotations

import sys

from .config import Settings
from .errors import SlicerError
from .links import Link, check_vm_name
from .inbound import Inbound, limits_from
from .repo import Worktree
from .target import resolve


def parse_url(url: str):
    """'VM' or 'slicer://VM[/PATH]' -> (vm, guest path or None)."""
    if url.startswith("slicer://"):
        rest = url[len("slicer://"):]
        vm, _, path = rest.partition("/")
        return check_vm_name(vm), ("/" + path if path else None)
    return check_vm_name(url), None


class Helper:
    def __init__(self, url: str, out=None):
        self.out = out or sys.stdout
        self.vm, path = parse_url(url)
        self.worktree = Worktree(".")
        self.settings = Settings(self.worktree.root)
        self.target = resolve(self.settings, self.vm, worktree=self.worktree, guest_path=path, find=False)
        link = self.target.link
        self.link = Link(vm=self.vm, guest_path=self.target.guest_path,
                         provider=link.provider if link else "", branch=link.branch if link else "",
                         agreed_commit=link.agreed_commit if link else "", vm_id=link.vm_id if link else "")
        self.session = None
        self.branches = {}

    def connect(self):
        if self.session is None:
            self.session = self.target.session()
        return self.session

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def run(self, lines) -> None:
        batch = []
        for raw in lines:
            line = raw.rstrip("\n")
            if line == "capabilities":
                self.write("fetch\npush\noption\n\n")      # push: only to say why it is refused
            elif line.startswith("option "):
                self.write("unsupported\n")
            elif line == "list for-push":
                raise SlicerError("`git push` to a VM is not supported: slicer:: remotes only fetch",
                                  hint="git slicer push %s gives the VM this worktree's branch and changes" % self.vm)
            elif line == "list":
                self.write(self.list())
            elif line.startswith("fetch "):
                batch.append(line.split()[1])
            elif line == "":
                if batch:
                    self.fetch(batch)
                    batch = []
                    self.write("\n")
                else:
                    break
            else:
                raise SlicerError("unsupported remote-helper command: %s" % line[:80])

    def list(self) -> str:
        inbound = self.inbound()
        state = inbound.state(max_entries=inbound.file_limits.max_entries)
        self.branches = inbound.branches(state)
        lines = ["%s refs/heads/%s\n" % (oid, name) for name, oid in sorted(self.branches.items())]
        if state["branch"] in self.branches:
            lines.append("@refs/heads/%s HEAD\n" % state["branch"])
        return "".join(lines) + "\n"

    def fetch(self, wanted) -> None:
        tips = {name: oid for name, oid in self.branches.items() if oid in set(wanted)}
        self.inbound().import_objects(tips.values())

    def inbound(self) -> Inbound:
        """What comes in from the VM: the same validation and quarantine as pull."""
        return Inbound(self.worktree, self.connect(), self.link, *limits_from(self.settings))

    def close(self) -> None:
        if self.session is not None:
            self.session.close()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        sys.stderr.write("usage: git-remote-slicer <remote> <url>  (run by git for slicer:: URLs)\n")
        return 2
    helper = None
    try:
        helper = Helper(argv[1])
        helper.run(sys.stdin)
        return 0
    except SlicerError as exc:
        sys.stderr.write("fatal: slicer: %s\n" % exc + ("hint: %s\n" % exc.hint if exc.hint else ""))
        return 1
    except BrokenPipeError:
        return 1
    finally:
        if helper is not None:
            helper.close()


if __name__ == "__main__":
    sys.exit(main())
