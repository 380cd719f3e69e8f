"""The one exception type for problems a user can fix (bad input, missing setup).

The CLI prints these as a single line without a traceback and exits with code 2; any
other exception is a bug and keeps its traceback.
"""


class OsmError(Exception):
    """A user-fixable problem, reported as one line naming the file and what is wrong."""


def warn(message: str) -> None:
    """Print a warning the user should read as one line on stderr (the run goes on)."""
    import sys

    print(f"osmedseg: warning: {' '.join(message.split())}", file=sys.stderr)
