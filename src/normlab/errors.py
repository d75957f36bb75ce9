"""The one exception type the CLI turns into a one-line message and exit code 2."""


class UsageError(ValueError):
    """Bad input from the user: a missing file, a bad flag value, an unknown name.

    The message is one line that names the problem and the way out.
    """
