"""elan_arch.utils.fileio.atomic_path: nothing half-written is left looking complete."""
from __future__ import annotations

import os

import pytest

from elan_arch.utils.errors import ElanError
from elan_arch.utils.fileio import atomic_path


def test_file_appears_only_on_success_and_existing_output_needs_overwrite(tmp_path):
    dst = tmp_path / 'out.bin'
    with pytest.raises(RuntimeError):
        with atomic_path(dst) as tmp:
            tmp.write_bytes(b'half')
            raise RuntimeError('interrupted')
    assert not dst.exists() and os.listdir(tmp_path) == []
    with atomic_path(dst) as tmp:
        tmp.write_bytes(b'done')
    assert dst.read_bytes() == b'done'
    with pytest.raises(ElanError, match='already exists; pass --force to replace it'):
        with atomic_path(dst):
            pass
    with atomic_path(dst, overwrite=True) as tmp:
        tmp.write_bytes(b'new')
    assert dst.read_bytes() == b'new' and os.listdir(tmp_path) == ['out.bin']


def test_folder_gets_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / 'tree', is_dir=True) as tmp:
            (tmp / 'a.txt').write_text('x')
    finally:
        os.umask(old)
    assert (tmp_path / 'tree' / 'a.txt').read_text() == 'x'
    assert (tmp_path / 'tree').stat().st_mode & 0o777 == 0o755
