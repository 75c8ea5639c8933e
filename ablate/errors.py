"""The one exception type the CLI turns into a one-line message and exit code 2."""


class AblateError(Exception):
    """A problem with the user's input (study, data, store) rather than a bug."""
