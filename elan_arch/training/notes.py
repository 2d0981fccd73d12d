"""One-line warnings of a training run: on the console at once, and in the run's log once it exists.

basicsr's logger (and its log file under ``experiments/<name>/``) is made only after the start-up
checks and the choice of the resume state, whose warnings would otherwise reach the console alone.
:func:`note` prints them at once (rank 0) and keeps them; :func:`write_pending_notes` copies them into
the log file as soon as it exists.
"""
from __future__ import annotations

import logging
import sys
from os import path as osp
from typing import List

from elan_arch.training import elastic

_PENDING: List[str] = []
LOGGER = 'basicsr'


def _logger_ready() -> bool:
    from basicsr.utils.logger import initialized_logger

    return LOGGER in initialized_logger


def to_log_files(level: int, message: str) -> None:
    """Write ``message`` to the file handlers of basicsr's logger only (not the console)."""
    logger = logging.getLogger(LOGGER)
    record = logger.makeRecord(LOGGER, level, __file__, 0, message, None, None)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler) and osp.exists(handler.baseFilename):
            handler.handle(record)


def note(message: str) -> None:
    """A one-line warning: basicsr's logger once it exists; before, stderr (rank 0) now and the log later."""
    if _logger_ready():
        logging.getLogger(LOGGER).warning(message)
        return
    if elastic.is_main_process():
        print(f'WARNING: {message}', file=sys.stderr, flush=True)
    _PENDING.append(message)


def write_pending_notes() -> None:
    """Copy the notes made before basicsr's logger existed into the log file (called once it does)."""
    while _PENDING:
        to_log_files(logging.WARNING, _PENDING.pop(0))
