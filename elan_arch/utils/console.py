"""A console that cannot fail a run: writes to a closed or broken stdout/stderr are dropped, not raised.

``basicsr train -opt FILE 2>&1 | tee train.log`` and then Ctrl-C: the terminal's SIGINT ends ``tee`` as
well, so the next write to the pipe raises ``BrokenPipeError`` (Python ignores SIGPIPE). Raised from a
signal handler or a ``print`` in the middle of a save, it ended the run with nothing saved; raised at the
end, it turned exit status 130 into 1, and Python's last flush of a broken stream into 120. A full disk
under a redirected ``> train.log`` does the same with ``OSError: [Errno 28]``.

:func:`sturdy_console` (the ``elan`` and ``basicsr`` commands run inside it) puts :class:`SturdyStream`
in front of ``sys.stdout`` and ``sys.stderr``: the first write or flush that fails points the stream's
file descriptor at ``/dev/null`` (so later writes, C code writing to the descriptor, and the
interpreter's final flush all succeed) and the run goes on; what could not be shown is lost, and the
run's log file still has it.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator, Optional, TextIO


class SturdyStream:
    """``stream`` (a text stream) whose ``write`` and ``flush`` never raise; everything else is the stream's.

    ``broken`` is the error that ended its output (None while it works).
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.broken: Optional[BaseException] = None

    def write(self, text: str) -> int:
        if self.broken is None:
            try:
                return self._stream.write(text)
            except (OSError, ValueError) as err:  # EPIPE, ENOSPC, EBADF; ValueError: the file was closed
                self._silence(err)
        return len(text)

    def flush(self) -> None:
        if self.broken is None:
            try:
                self._stream.flush()
            except (OSError, ValueError) as err:
                self._silence(err)

    def _silence(self, err: BaseException) -> None:
        """Point the stream's descriptor at /dev/null and let it flush what it holds there."""
        self.broken = err
        with contextlib.suppress(OSError, ValueError, AttributeError):
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, self._stream.fileno())
            finally:
                os.close(null)
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def sturdy(stream: Optional[TextIO]) -> Optional[TextIO]:
    """``stream`` behind a :class:`SturdyStream` (None, or one already, as it is)."""
    if stream is None or isinstance(stream, SturdyStream):
        return stream
    return SturdyStream(stream)  # type: ignore[return-value]


@contextlib.contextmanager
def sturdy_console() -> Iterator[None]:
    """``sys.stdout`` and ``sys.stderr`` as :class:`SturdyStream` inside; flushed (safely) and put back after."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = sturdy(sys.stdout), sturdy(sys.stderr)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        sys.stdout, sys.stderr = saved
