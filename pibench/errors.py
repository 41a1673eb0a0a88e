"""Errors a user can fix, apart from bugs.

The CLI prints a `PibenchError` as one line (what is wrong and how to fix it) and exits
with status 2; any other exception is a bug in pibench or its libraries and keeps its
traceback. Each subclass also derives from the built-in error it refines
(`UsageError` is a `ValueError`, `UnknownName` a `KeyError`, ...), so code that
catches the built-in one keeps working.
"""

from __future__ import annotations


class PibenchError(Exception):
    """A problem with what the user asked for or gave (arguments, files, configs, machine); the message says the fix."""


class UsageError(PibenchError, ValueError):
    """An argument, setting or option value that cannot work."""


class UnknownName(PibenchError, KeyError):
    """A name that no registry knows (model, dataset, method, protocol, network); the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MissingFile(PibenchError, FileNotFoundError):
    """A file or folder the user named does not exist."""

    def __str__(self) -> str:  # OSError's str is "[Errno ...]" when given an errno
        return str(self.args[0]) if self.args else ""


class MissingExtra(PibenchError, ImportError):
    """An optional extra (e.g. SecretFlow SPU) that a protocol needs is not installed."""


class Unavailable(PibenchError, RuntimeError):
    """Something this machine lacks for what was asked (root, iproute2, Slurm); the message says how to get it."""


class WriteError(PibenchError, OSError):
    """A file could not be written (a full disk, no permission); what was written before is kept."""

    def __str__(self) -> str:  # the message, without OSError's "[Errno 28]"
        return self.strerror or (str(self.args[0]) if self.args else "")
