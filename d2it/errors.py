"""The one error type the harness raises for bad input: the CLI prints it without a traceback."""


class D2itError(Exception):
    """Bad input (file, config key, value): the message names the cause."""
