"""Protocol v1: framing, the overlay manifest and the file stream (stdlib only)."""
