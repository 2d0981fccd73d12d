"""Atomic output: write to a temporary sibling path, rename into place only on success.

An interrupted or failed job therefore never leaves a file or folder at the
final path that looks complete. Also :func:`shown_path`, how messages name a path.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Union

from elan_arch.utils.errors import ElanError

PathLike = Union[str, os.PathLike]


def shown_path(path: PathLike) -> str:
    """``path`` for a message: a relative path also says what it is relative to (the current directory,
    which is what basicsr and the commands read it relative to)."""
    if Path(path).is_absolute():
        return os.fspath(path)
    return f'{os.fspath(path)} (relative to the current directory: {Path(path).absolute()})'


def check_output_free(path: PathLike, overwrite: bool, flag: str = '--force') -> Path:
    """Return ``path`` as a Path; raise :class:`ElanError` if it exists and ``overwrite`` is off."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ElanError(f'{path} already exists; pass {flag} to replace it')
    return path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(path: PathLike, overwrite: bool = False, is_dir: bool = False,
                flag: str = '--force') -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it to ``path``.

    Args:
        path: Final file or folder.
        overwrite: Replace an existing ``path``; otherwise an existing one raises.
        is_dir: Create the temporary path as an empty folder (else nothing is created).
        flag: Option named in the error message when ``path`` exists.

    On any exception the temporary path is removed and ``path`` is left as it was.
    """
    final = check_output_free(path, overwrite, flag)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{final.name}.', suffix='.tmp', dir=final.parent))
    tmp.rmdir()  # mkdtemp only reserved a unique name; recreate with the umask's permissions, not 0700
    if is_dir:
        tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            _remove(final)
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


def model_path(path: str, suffix: str, what: str) -> Path:
    """``path`` as a Path, checked to exist; ElanError naming it and ``what`` (e.g. 'OpenVINO IR') otherwise."""
    p = Path(path)
    if not p.is_file():
        raise ElanError(f'{path}: no such {what} file')
    if p.suffix.lower() != suffix:
        raise ElanError(f'{path}: expected the {what}\'s {suffix} file')
    return p
