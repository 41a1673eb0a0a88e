"""Subcommands of the `pibench` CLI (see pibench.cli)."""
