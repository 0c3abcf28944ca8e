"""Which exceptions are a user's bad input (one line on the command line) and which are bugs."""

from __future__ import annotations

from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[1]
_PROJECT_PARTS = ("utils", "backbone", "lightning_modules", "datamodules", "callbacks", "cli.py", "sweep.py", "studio.py")
_BUG_TYPES = (AssertionError, AttributeError, NameError, IndexError, KeyError, ZeroDivisionError, ImportError,
              NotImplementedError, RecursionError)


def _raised_in_project(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by the project's own code (not a library, not a test)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    file = Path(tb.tb_frame.f_code.co_filename).resolve()
    if _REPO_ROOT not in file.parents:
        return False
    parts = file.relative_to(_REPO_ROOT).parts
    return parts[0] in _PROJECT_PARTS


def user_error_message(exc: BaseException) -> str | None:
    """The message of a bad-input error in ``exc``'s chain (innermost first), else ``None`` (a bug).

    A bad-input error is one the project raised on purpose (``ValueError``, ``FileNotFoundError``,
    ``AssetError``, ...) or Lightning's ``MisconfigurationException``; the wrappers around it
    (jsonargparse's union errors, which end in a dump of the parsed config) are dropped.
    """
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not c for c in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    for error in reversed(chain):
        if isinstance(error, MisconfigurationException):
            return str(error)
        if isinstance(error, Exception) and not isinstance(error, _BUG_TYPES) and _raised_in_project(error):
            return str(error)
    return None
