"""Errors that end the server: after one of these, nothing more may be acknowledged."""


class FatalError(Exception):
    """The server can no longer keep its promises (the log, or files it logged, failed)."""
