"""The guest side of git-slicer (stdlib + git CLI only)."""
