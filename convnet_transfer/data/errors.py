"""The data stage's errors. Each message names the file (and line) and says what to do."""
from __future__ import annotations

__all__ = ["SplitError", "Md5MismatchError", "DatabaseError", "BadImageError", "ListError"]


class SplitError(ValueError):
    """Bad input to the split stage: the message names the file (and line) and what to do. Nothing was written."""


class Md5MismatchError(SplitError):
    """A list's md5 differs from the published one."""

    def __init__(self, message: str, name: str, expected: str, actual: str):
        super().__init__(message)
        self.name, self.expected, self.actual = name, expected, actual


class DatabaseError(RuntimeError):
    """A database that cannot be made or read: the message names the file and says what to do."""


class BadImageError(DatabaseError):
    """An image in the list is missing or cannot be decoded."""


class ListError(SplitError, DatabaseError):
    """A Caffe image list that breaks the list rules (lists.read_list): bad input to the split stage and to the
    database stage alike, so each stage's callers catch it as their own error."""
