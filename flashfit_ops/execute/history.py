"""Moved to flashfit_ops.runs.history (the history records every mutating command); kept for imports."""

from flashfit_ops.runs.history import append, entries, read_raw, successful_versions

__all__ = ["append", "entries", "read_raw", "successful_versions"]
