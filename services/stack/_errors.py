"""The error the local stack raises: its message says what failed and what to do."""


class StackError(Exception):
    """A stack operation failed; the message names the service, port and log file."""
