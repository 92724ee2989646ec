"""Exceptions that carry a user-facing explanation (what is wrong and how to fix it)."""


class IsopoBenchError(Exception):
    """Base class: the CLI prints these without a stack trace."""


class ConfigError(IsopoBenchError, ValueError):
    """A configuration value is invalid; the message names the field and the fix."""

    def __init__(self, field: str, problem: str, fix: str):
        self.field = field
        super().__init__(f"config field `{field}`: {problem}. Fix: {fix}")


class UnknownNameError(IsopoBenchError, KeyError):
    """A registry lookup failed; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class NonFiniteError(IsopoBenchError, FloatingPointError):
    """A loss or gradient became NaN/Inf; training stops and keeps the last good checkpoint."""


class DataError(IsopoBenchError, ValueError):
    """A dataset file or row is malformed; the message names the file and line."""
