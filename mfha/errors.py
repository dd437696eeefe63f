"""The project's error classes: user mistakes derive from MFHAError so the CLIs can print one line."""


class MFHAError(Exception):
    """Base of every error that a user can cause and fix; CLIs print it in one line and exit 1."""


class ConfigError(MFHAError, ValueError):
    """A config field or command-line value breaks a rule; the message names the field."""


class DataError(MFHAError):
    """A dataset cannot be loaded or does not have the expected shape."""


class TrainingDiverged(MFHAError):
    """The training loss became NaN, infinite, or several times the uniform guess ln(V)."""


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none), for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


__all__ = ["ConfigError", "DataError", "MFHAError", "TrainingDiverged", "first_line"]
