"""Images in and out of ``elan upscale``: what the input is (8- or 16-bit, grey or colour, with or without
alpha) is what the output PNG is.

* 16-bit inputs (PNG, TIFF) give 16-bit outputs, the network seeing all 16 bits (it works on floats in
  [0, 1]); float TIFFs are clipped to [0, 1] and written as 16-bit.
* Grey inputs run as three equal channels and come out grey (the channels' mean).
* An alpha channel is upscaled by the network too (as three equal channels, as Real-ESRGAN's inference
  does), or simply repeated when it is constant (fully opaque images cost nothing more).
* EXIF orientation is applied as OpenCV applies it to the colour (the alpha follows the same turn).
* A damaged file (truncated, corrupt: :func:`elan_arch.utils.images.decode_file`, the reader ``elan prepare``
  uses too) is an error naming it, unless ``allow_damaged``: then :attr:`Picture.damage` says what is wrong.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

from elan_arch.utils.errors import ElanError

#: ``run(rgb, dtype)``: (H, W, 3) float32 RGB in [0, 1] -> (H*s, W*s, 3) RGB of ``dtype`` (uint8, uint16 rounded;
#: float32 clamped to [0, 1]); :func:`~elan_arch.inference.upscale.upscale_array` with the network and options bound.
Upscale = Callable[[np.ndarray, type], np.ndarray]


@dataclass
class Picture:
    """An input image: ``rgb`` (H, W, 3) float32 in [0, 1], ``alpha`` (H, W) float32 in [0, 1] or None,
    ``grey`` whether it came as one channel, ``dtype`` the output's sample type (uint8 or uint16), ``damage`` the
    decoders' report on a damaged file read with ``allow_damaged`` (None for an intact one)."""
    rgb: np.ndarray
    alpha: Optional[np.ndarray]
    grey: bool
    dtype: type
    damage: Optional[str] = None


def _unit(samples: np.ndarray, path: Path) -> np.ndarray:
    """Samples of ``path`` as float32 in [0, 1]."""
    if samples.dtype == np.uint8:
        return samples.astype(np.float32) / 255.
    if samples.dtype == np.uint16:
        return samples.astype(np.float32) / 65535.
    if samples.dtype in (np.float32, np.float64):
        return np.clip(samples, 0, 1).astype(np.float32)
    raise ElanError(f'{path}: samples of type {samples.dtype} are not supported (8-bit, 16-bit or float images are); '
                    'convert it to an 8- or 16-bit PNG')


def _oriented_alpha(raw: np.ndarray, oriented: np.ndarray) -> Optional[np.ndarray]:
    """The alpha of ``raw`` (as decoded, BGRA) turned as OpenCV turned its colour into ``oriented`` (EXIF
    orientation: one of the 8 rotations and flips), or None if none matches."""
    colour = raw[..., 0] if oriented.ndim == 2 else raw[..., :3]
    alpha = raw[..., 3]
    for flipped in (False, True):
        c, a = (colour[:, ::-1], alpha[:, ::-1]) if flipped else (colour, alpha)
        for _ in range(4):
            if c.shape == oriented.shape and np.array_equal(c, oriented):
                return np.ascontiguousarray(a)
            c, a = np.rot90(c), np.rot90(a)
    return None


def read_picture(path: Path, allow_damaged: bool = False) -> Picture:
    """Decode ``path`` (any format OpenCV reads); ElanError if it cannot be decoded or is damaged (with
    ``allow_damaged``, a damaged file that decodes is read, its :attr:`Picture.damage` set)."""
    from elan_arch.utils.images import DamagedImage, decode_file

    flags = [cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR]  # EXIF orientation applied
    if path.suffix.lower() in ('.png', '.webp', '.tif', '.tiff'):  # formats that can carry alpha
        flags.append(cv2.IMREAD_UNCHANGED)
    try:
        decoded = decode_file(path, flags, allow_damaged)
    except DamagedImage as err:
        raise DamagedImage(f'{err} (or upscale it anyway with --allow-damaged)') from None
    oriented, raw = decoded.arrays[0], decoded.arrays[1] if len(decoded.arrays) > 1 else None
    if oriented.ndim == 3 and oriented.shape[2] == 4:  # some decoders keep alpha even here
        oriented, alpha_raw = oriented[..., :3], oriented[..., 3]
    else:
        alpha_raw = None
        if raw is not None and raw.ndim == 3 and raw.shape[2] == 4:
            alpha_raw = _oriented_alpha(raw, oriented)
            if alpha_raw is None:
                raise ElanError(f'{path}: its alpha channel does not line up with its colour; '
                                'save it without EXIF orientation')
    if oriented.ndim == 3 and oriented.shape[2] != 3:
        raise ElanError(f'{path}: {oriented.shape[2]} channels are not supported (grey, colour and colour with '
                        'alpha are); convert it to an RGB(A) PNG')
    grey = oriented.ndim == 2
    dtype = np.uint8 if oriented.dtype == np.uint8 else np.uint16
    unit = _unit(oriented, path)
    rgb = np.repeat(unit[..., None], 3, axis=2) if grey else np.ascontiguousarray(unit[..., ::-1])
    alpha = None if alpha_raw is None else _unit(alpha_raw, path)
    return Picture(rgb, alpha, grey, dtype, decoded.damage)


def _quantise(unit: np.ndarray, dtype: type) -> np.ndarray:
    return (np.clip(unit, 0, 1) * float(np.iinfo(dtype).max)).round().astype(dtype)


def _one_channel(planes: np.ndarray, run: Upscale, dtype: type) -> np.ndarray:
    """A one-channel image given as three equal (H, W, 3) planes, upscaled by ``run`` and averaged back to one
    channel of ``dtype`` (grey images and alpha)."""
    return _quantise(run(planes, np.float32).mean(axis=2), dtype)


def upscale_picture(picture: Picture, run: Upscale) -> np.ndarray:
    """The output of ``picture`` as OpenCV writes it: (H*s, W*s) grey, (H*s, W*s, 3) BGR or (H*s, W*s, 4) BGRA,
    of ``picture.dtype``."""
    if picture.grey:
        out = _one_channel(picture.rgb, run, picture.dtype)
    else:
        out = run(picture.rgb, picture.dtype)
        cv2.cvtColor(out, cv2.COLOR_RGB2BGR, dst=out)  # in place: no second output-sized copy
    if picture.alpha is None:
        return out
    alpha = picture.alpha
    if alpha.min() == alpha.max():
        alpha_out = np.full(out.shape[:2], _quantise(alpha[:1, :1], picture.dtype)[0, 0], dtype=picture.dtype)
    else:
        alpha_out = _one_channel(np.repeat(alpha[..., None], 3, axis=2), run, picture.dtype)
    colour = cv2.cvtColor(out, cv2.COLOR_GRAY2BGR) if picture.grey else out
    return np.dstack([colour, alpha_out])
