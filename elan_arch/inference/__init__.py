"""Upscaling images with a trained ELAN (``elan upscale``, and BasicSR's tiled validation).

* :mod:`~elan_arch.inference.upscale`: :func:`upscale_array` (whole image or seamless tiles of one
  shape), device/precision set-up and ``torch.compile``;
* :mod:`~elan_arch.inference.image_io`: image files in and out, keeping their kind (8/16-bit, grey,
  alpha, EXIF orientation);
* :mod:`~elan_arch.inference.pipeline`: a folder as a pipeline (decode ahead, encode behind, in
  threads) while the network runs.

A picture flows: file -> :func:`~elan_arch.inference.image_io.read_picture` -> network through
:func:`upscale_array` -> PNG written atomically.
"""
from elan_arch.inference.upscale import DEFAULT_OVERLAP, DEFAULT_TILE, upscale_array

__all__ = ['DEFAULT_OVERLAP', 'DEFAULT_TILE', 'upscale_array']
