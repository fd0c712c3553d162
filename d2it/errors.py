"""The one error type the harness raises for bad input: the CLI prints it without a traceback."""

WORKER = "Caught D2itError in DataLoader worker process"
ORIGINAL = "d2it.errors.D2itError: "


class D2itError(Exception):
    """Bad input (file, config key, value): the message names the cause.

    A DataLoader re-raises a worker's error as `D2itError(<the worker's traceback>)`; the message
    kept is the worker's own, so the error stays one line wherever it was raised."""

    def __init__(self, message: str = ""):
        if message.startswith(WORKER) and ORIGINAL in message:
            message = message.rsplit(ORIGINAL, 1)[1].strip()
        super().__init__(message)
