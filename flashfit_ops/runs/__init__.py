"""Runs of the commands that change something: the deploy lock, the history, and `recorded_run`,
the one wrapper that holds the one and writes the other (see runs.recorded)."""
