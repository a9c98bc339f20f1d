"""Errors the optimizer reports to users: each message says what was wrong and what was expected."""


class OptimizeError(Exception):
    """Bad input to the optimizer (source, validation data, options)."""


class SourceError(OptimizeError):
    """The source model cannot be loaded."""


class ValidationDataError(OptimizeError):
    """Validation data or labels are unreadable or have the wrong format."""
