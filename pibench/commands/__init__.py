"""Subcommands of the `pibench` CLI (see pibench.cli)."""


class Interrupted(Exception):
    """Ctrl-C during a command; the message says what was interrupted and what was kept."""
