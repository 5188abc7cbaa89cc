"""The one error type that user-facing input problems raise."""


class ConvergeError(ValueError):
    """Bad input from the user: a task file, data, a flag value or a run folder.

    The CLI prints it as one line (``error: <message>``) and exits with status 2.
    Messages name the argument and the bad value.
    """
