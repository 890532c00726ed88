"""ambient-rlhf: train language models from the feedback communities already leave."""

__version__ = "0.1.0"


class AmbientError(Exception):
    """An error caused by the user's input or environment.

    The CLI prints its message on one line (no traceback) and exits with status 2.
    Messages should say where (file:line, field) and what to do.
    """
