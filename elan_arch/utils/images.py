"""Image files for dataset preparation: listing, reading, PNG encoding and MATLAB bicubic downscaling.

Images are handled as OpenCV does (``H x W x 3`` uint8, BGR channel order): grey and 16-bit inputs
become 8-bit BGR, an alpha channel is dropped, exactly as BasicSR's ``imfrombytes`` reads them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Tuple

import cv2
import numpy as np

from elan_arch.utils.errors import ElanError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')
PNG_COMPRESSION = 1  # what basicsr.utils.lmdb_util writes into meta_info.txt (and its default)
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # PNG colour type -> channels


def list_images(folder: Path, what: str) -> List[Path]:
    """The image files directly inside ``folder``, sorted by name.

    Sub-folders and hidden files (``.name``) are ignored. ``what`` names the folder's role in
    error messages. Raises :class:`ElanError` if the folder is missing or empty, or holds a file
    that is not an image, or two images with the same name stem.
    """
    if not folder.is_dir():
        raise ElanError(f'{what} folder {folder} does not exist; check the path (or --input)')
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith('.'))
    others = [p for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
    if others:
        raise ElanError(f'{others[0]} is not an image ({len(others)} such file(s) in {folder}; images end '
                        f'with {", ".join(IMAGE_EXTENSIONS)}): move it out of the folder and run again')
    if not files:
        raise ElanError(f'{what} folder {folder} holds no images; put the images there (or fix --input)')
    stems: dict = {}
    for path in files:
        if path.stem in stems:
            raise ElanError(f'{stems[path.stem]} and {path} have the same name stem; keep only one of them')
        stems[path.stem] = path
    return files


def check_key(stem: str, path: Path) -> str:
    """Return ``stem`` if BasicSR can use it as an LMDB key (ASCII, no dot, no white space)."""
    if not stem.isascii() or '.' in stem or any(c.isspace() for c in stem):
        raise ElanError(f'{path}: BasicSR LMDB keys must be ASCII without dots or spaces '
                        f'(it splits meta_info.txt names at the first dot); rename the file')
    return stem


def read_image(path: Path) -> np.ndarray:
    """Read ``path`` as ``H x W x 3`` uint8 BGR; :class:`ElanError` if it cannot be decoded."""
    img = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise ElanError(f'{path} cannot be read as an image (corrupt, truncated or not an image); '
                        f'replace it with a good copy or remove it')
    return img


def encode_png(img: np.ndarray, compress_level: int = PNG_COMPRESSION) -> bytes:
    """PNG bytes of ``img`` (H x W x C uint8) at the given zlib level, as BasicSR's LMDB tools write."""
    ok, buf = cv2.imencode('.png', np.ascontiguousarray(img), [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
    if not ok:
        raise ElanError(f'OpenCV could not encode an image of shape {img.shape} as PNG')
    return buf.tobytes()


def write_png(path: Path, img: np.ndarray, compress_level: int = PNG_COMPRESSION) -> None:
    """Write ``img`` to ``path`` as PNG (at zlib level ``compress_level``)."""
    path.write_bytes(encode_png(img, compress_level))


def png_shape(data: bytes) -> Tuple[int, int, int]:
    """``(height, width, channels)`` read from the IHDR chunk of PNG bytes (no decoding)."""
    if data[:8] != b'\x89PNG\r\n\x1a\n' or data[12:16] != b'IHDR':
        raise ValueError('not PNG data')
    width, height = int.from_bytes(data[16:20], 'big'), int.from_bytes(data[20:24], 'big')
    return height, width, _PNG_CHANNELS[data[25]]


def mod_crop(img: np.ndarray, modulo: int) -> np.ndarray:
    """Crop the bottom/right of ``img`` so that height and width are multiples of ``modulo``."""
    h, w = img.shape[:2]
    return img[:h - h % modulo, :w - w % modulo]


def bicubic_downscale(img: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB ``imresize(img, 1/scale, 'bicubic')`` of a uint8 image, rounded back to uint8.

    ``img`` must be mod-cropped to ``scale``; the result is ``(H/scale) x (W/scale)``. The resampling is
    :func:`basicsr.utils.matlab_functions.imresize` (antialiased cubic kernel, symmetric padding),
    rounded half up as MATLAB rounds when it converts to uint8 - how DIV2K's and the benchmark sets'
    LR images were made.
    """
    from basicsr.utils.matlab_functions import imresize

    h, w = img.shape[:2]
    if h % scale or w % scale:
        raise ValueError(f'image of size {h}x{w} is not mod-cropped to scale {scale}')
    out = imresize(img.astype(np.float64) / 255., 1. / scale)
    return np.clip(np.floor(np.asarray(out, dtype=np.float64) * 255. + 0.5), 0, 255).astype(np.uint8)
