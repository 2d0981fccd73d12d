"""The one exception type the ``elan`` and ``basicsr`` commands turn into a clean error message."""


class ElanError(Exception):
    """A user-facing error: the message names the file or option at fault and what to do."""
