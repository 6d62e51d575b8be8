"""Per-user directories for sockets: made 0700 by us, and used only while they still are.

Socket paths must stay short (108 bytes; ssh adds 58 to its control path). No local sandbox sees
these directories: each sandbox gets its own empty /tmp, and /run is not mounted."""

import os
import stat


def private_dir(name: str):
    """/tmp/git-slicer-NAME-UID, or None when it exists but is not a 0700 directory of ours
    (someone else made it: never share a socket directory)."""
    return _own_dir(os.path.join("/tmp", "git-slicer-%s-%d" % (name, os.getuid())))


def runtime_dir(name: str):
    """$XDG_RUNTIME_DIR/git-slicer-NAME when the session has a runtime directory (the place
    for per-user sockets), else private_dir(NAME); None when neither is a 0700 directory of ours."""
    base = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(base) and _own_dir(base, create=False) is not None:
        return _own_dir(os.path.join(base, "git-slicer-" + name))
    return private_dir(name)


def _own_dir(directory: str, create: bool = True):
    if create:
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        except OSError:
            return None
    try:
        st = os.lstat(directory)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) != 0o700:
        return None
    return directory
