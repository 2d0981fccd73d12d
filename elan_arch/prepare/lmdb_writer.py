"""Write a folder of PNG files into an LMDB exactly as BasicSR's ``lmdb_util`` lays it out.

``<name>.lmdb/`` holds ``data.mdb``, ``lock.mdb`` and ``meta_info.txt``; the key of an image is its
file name without extension, the value its PNG bytes (stored as they are, not re-encoded) and
each line of ``meta_info.txt`` reads ``<key>.png (<h>,<w>,<c>) <compression level>``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List

import lmdb
from tqdm import tqdm

from elan_arch.utils.images import PNG_COMPRESSION, png_shape

_PAGE = 4096
_COMMIT_BYTES = 256 * 2**20  # commit about every 256 MiB of values to bound the dirty-page memory


def _pages(nbytes: int) -> int:
    return -(-nbytes // _PAGE)


def lmdb_map_size(value_sizes: List[int], key_length: int = 32) -> int:
    """An LMDB map size that fits these values, computed from their sizes.

    Each value is charged its own pages (overflow pages plus header, rounded up), each key a share
    of leaf and branch pages; the total gets 25 % for the B-tree's copy-on-write pages and a fixed
    16 MiB. The map is virtual address space: data.mdb grows only as far as it is written.
    """
    data_pages = sum(_pages(size + 64) for size in value_sizes)
    tree_pages = _pages(len(value_sizes) * (key_length + 64)) * 2
    return int((data_pages + tree_pages) * _PAGE * 1.25) + 16 * 2**20


def write_lmdb(png_dir: Path, lmdb_dir: Path, desc: str, compress_level: int = PNG_COMPRESSION,
               progress: bool = True) -> int:
    """Store every ``*.png`` of ``png_dir`` (keys = file stems, sorted) in a new LMDB at ``lmdb_dir``.

    Returns the number of entries. ``lmdb_dir`` must not exist yet (callers pass a temporary path).
    """
    files = sorted(png_dir.glob('*.png'))
    sizes = [f.stat().st_size for f in files]
    lmdb_dir.mkdir(parents=True)
    env = lmdb.open(os.fspath(lmdb_dir), map_size=lmdb_map_size(sizes, max((len(f.stem) for f in files),
                                                                           default=0)))
    meta_lines = []
    try:
        txn = env.begin(write=True)
        pending = 0
        for path in tqdm(files, desc=desc, unit='crop', disable=not progress, dynamic_ncols=True):
            data = path.read_bytes()
            h, w, c = png_shape(data)
            txn.put(path.stem.encode('ascii'), data)
            meta_lines.append(f'{path.stem}.png ({h},{w},{c}) {compress_level}\n')
            pending += len(data)
            if pending >= _COMMIT_BYTES:
                txn.commit()
                txn, pending = env.begin(write=True), 0
        txn.commit()
    finally:
        env.close()
    (lmdb_dir / 'meta_info.txt').write_text(''.join(meta_lines))
    return len(files)
