"""git-slicer: isolated copies of git worktrees for coding agents.

This module must stay import-free: the guest agent imports the package inside
VMs that have only the Python standard library.
"""

__version__ = "0.1.0"
