"""The one exception type the ``elan`` and ``basicsr`` commands turn into a clean error message."""


class ElanError(Exception):
    """A user-facing error: the message names the file or option at fault and what to do."""


def one_line(error: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message``, at most ``limit`` characters and without ``|``: for a
    benchmark table's cell when one model fails and the others go on."""
    lines = str(error).strip().splitlines()
    return f'{type(error).__name__}: {lines[0] if lines else ""}'[:limit].replace('|', '/')
