"""The one exception type for user errors: the CLI prints it as one line and exits 2."""


class SSTMError(Exception):
    """A problem with the user's input or environment (bad id, missing file, wrong column, ...)."""
