"""One exception type for bad user input, printed by the CLI without a traceback."""

from __future__ import annotations

__all__ = ["S2S2InputError"]


class S2S2InputError(Exception):
    """Bad input from the user: names the file, what is wrong and how to fix it.

    Args:
        path: the file or folder at fault (``None`` when there is none).
        problem: what is wrong, one sentence.
        fix: how to fix it, one sentence.
    """

    def __init__(self, path: object, problem: str, fix: str = "") -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path else ""
        how = f" Fix: {fix}" if fix else ""
        super().__init__(f"{where}{problem}.{how}")
