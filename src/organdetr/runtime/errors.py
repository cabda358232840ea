"""Errors raised on bad user input.

Every problem with an input file is reported as :class:`InputError` whose message is a single
line naming the file and the problem, e.g.
``"scan.nii.gz: image is 4D (shape 64x64x32x2); expected a 3D volume"``.
The CLI prints the message (no traceback) and, in a batch, lists all failures at the end.
"""

from __future__ import annotations

from pathlib import Path

MAX_PROBLEM = 1000
"""Characters of a problem kept in the message (values are cut earlier: ``runtime.text.brief``)."""


class InputError(ValueError):
    """A user-supplied file or value is unusable. ``str(err)`` is one line: ``"<file>: <problem>"``."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        problem = " ".join(str(problem).split())  # force one line
        self.problem = problem if len(problem) <= MAX_PROBLEM else problem[: MAX_PROBLEM - 3] + "..."
        super().__init__(self.problem if path is None else f"{path}: {self.problem}")

    def __reduce__(self):
        # picklable (multiprocessing workers send errors back to the parent)
        return (type(self), (self.path, self.problem))


class DiskFullError(InputError):
    """Writing ``path`` failed because its file system is full (or the user's quota is spent).

    A batch stops on it (every later case would fail the same way) instead of listing each case.
    """
