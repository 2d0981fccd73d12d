"""Image files: listing, reading with damage detection, PNG encoding and MATLAB bicubic downscaling.

Images are handled as OpenCV does (``H x W x 3`` uint8, BGR channel order): grey and 16-bit inputs
become 8-bit BGR, an alpha channel is dropped, exactly as BasicSR's ``imfrombytes`` reads them.

:func:`decode_file` is the one reader of image files for ``elan prepare`` (:func:`read_image`) and
``elan upscale`` (:mod:`elan_arch.inference.image_io`). OpenCV decodes a truncated or corrupt JPEG (or
TIFF) anyway, fills what is missing with grey and only lets libjpeg print "Premature end of JPEG file"
on stderr, from C. So :func:`decode_file` decodes with fd 2 captured and treats the decoders' reports
of damage as errors, and also decodes JPEGs strictly with Pillow, which reports truncation itself:
see :func:`damage_in`.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

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


#: What libjpeg, libpng and libtiff (through OpenCV) print on stderr when the data they decode is damaged:
#: libjpeg's warnings about the data ("Corrupt JPEG data: ...", "Premature end of JPEG file"), libpng's
#: errors and warnings, OpenCV's reports of a decoder's error ("[ERROR:0@...] ... TIFF_Error ...").
DAMAGE_MESSAGE = re.compile(r'Corrupt JPEG data|Premature end of JPEG|libpng (?:error|warning)|TIFF_?Error|'
                            r'\[ ?ERROR:|\[ ?WARN:.*(?:grfmt|imdecode)')
#: Decoder messages that do not mean damaged pixels: a PNG's colour-profile chunk that libpng dislikes
#: ("iCCP: known incorrect sRGB profile", common in files saved by some editors).
HARMLESS_MESSAGE = re.compile(r'libpng warning: (?:iCCP|sRGB|cHRM|gAMA)')
_DECODING = threading.Lock()  # one captured decode at a time: fd 2 is the whole process's


class DamagedImage(ElanError):
    """An image file that decodes only with damage (:func:`decode_file`)."""


@dataclass
class Decoded:
    """What :func:`decode_file` read: one array per requested flag set, and ``damage``, the decoders' report
    of damage (None for an intact file; only set with ``allow_damaged``)."""
    arrays: List[np.ndarray]
    damage: Optional[str]


@contextlib.contextmanager
def _captured_stderr() -> Iterator[List[str]]:
    """Capture what C code writes to fd 2 meanwhile; the list gets the text when the block ends.

    Serialised by a lock. Text that other threads print meanwhile (a progress bar) is caught too: the
    caller writes back what is not a decoder's message. Where fd 2 cannot be duplicated (closed), nothing
    is captured.
    """
    with _DECODING, tempfile.TemporaryFile() as sink:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:
            saved = None
        text: List[str] = []
        if saved is not None:
            os.dup2(sink.fileno(), 2)
        try:
            yield text
        finally:
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
            sink.seek(0)
            text.append(sink.read().decode('utf-8', errors='replace'))


def _jpeg_truncated(data: bytes) -> Optional[str]:
    """Pillow's report when it decodes the JPEG ``data`` strictly and runs out of data, else None.

    A JPEG that ends with its end-of-image marker (``FF D9``) is not truncated (entropy-coded data never
    holds that pair), so it is not decoded a second time; only files ending otherwise (cut, or with data
    appended after the image) are decoded by Pillow to tell the two apart."""
    if data.endswith(b'\xff\xd9'):
        return None
    try:
        from PIL import Image, ImageFile
    except ImportError:
        return None
    with _DECODING:  # LOAD_TRUNCATED_IMAGES is Pillow's global
        strict, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
        try:
            return _strict_jpeg_load(Image, data)
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = strict


def _strict_jpeg_load(Image, data: bytes) -> Optional[str]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != 'JPEG':
                return None
            image.load()
    except OSError as err:
        return f'the file is truncated (Pillow: {err})' if 'truncated' in str(err) else None
    except Exception:
        return None  # what Pillow cannot decode is OpenCV's to judge
    return None


def damage_in(messages: str) -> Tuple[List[str], List[str]]:
    """Split what was printed on fd 2 during a decode into (the decoders' reports of damage, the other lines
    as printed, line ends kept)."""
    damage, others = [], []
    for line in messages.splitlines(keepends=True):
        if DAMAGE_MESSAGE.search(line) and not HARMLESS_MESSAGE.search(line):
            damage.append(line.strip())
        else:
            others.append(line)
    return damage, others


def decode_file(path: Path, flags: Sequence[int] = (cv2.IMREAD_COLOR, ), allow_damaged: bool = False) -> Decoded:
    """Decode the file ``path`` once per OpenCV ``flags`` (``cv2.imdecode`` of its bytes, read once), checked.

    A file is damaged when OpenCV cannot decode it, when a decoder reports damage on stderr while decoding
    it (:data:`DAMAGE_MESSAGE`: a truncated or corrupt JPEG, a PNG libpng warns about, a TIFF libtiff fails
    on), or, for a JPEG, when Pillow's strict decoder finds it truncated. :class:`ElanError` naming the file
    and the report then, unless ``allow_damaged`` (only for what still decodes: ``Decoded.damage`` says
    what). :class:`DamagedImage` (an ElanError) for a damaged file that decodes. Other messages the decoders
    print are passed on to stderr.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ElanError(f'{path} cannot be read ({err.strerror or err}); check the file and its permissions') from err
    buffer = np.frombuffer(data, np.uint8)
    truncated = _jpeg_truncated(data) if data[:2] == b'\xff\xd8' else None
    arrays, reports = [], [truncated] if truncated else []
    for flag in flags:
        with _captured_stderr() as printed:
            img = cv2.imdecode(buffer, flag) if buffer.size else None
        damage, others = damage_in(printed[0])
        if ''.join(others).strip():
            sys.stderr.write(''.join(others))
            sys.stderr.flush()
        reports += [line for line in damage if line not in reports]
        if img is None or img.size == 0:
            why = '; '.join(reports) or 'corrupt, truncated or not an image'
            raise ElanError(f'{path} cannot be read as an image ({why}); replace it with a good copy or remove it')
        arrays.append(img)
    damage = '; '.join(reports) or None
    if damage and not allow_damaged:
        raise DamagedImage(f'{path} is damaged: its decoder reports "{damage}" (OpenCV would fill what is missing '
                           'or wrong, e.g. flat grey below a cut); replace it with a good copy or remove it')
    return Decoded(arrays, damage)


def read_image(path: Path) -> np.ndarray:
    """Read ``path`` as ``H x W x 3`` uint8 BGR; :class:`ElanError` if it cannot be decoded or is damaged
    (:func:`decode_file`): a damaged photo must not become training data."""
    return decode_file(path, (cv2.IMREAD_COLOR, )).arrays[0]


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
