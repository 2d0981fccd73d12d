"""Upscaling whole images with an ELAN network: device/precision set-up and tiled inference.

Tiled inference splits the (reflect-padded) input into equal tiles whose size and
positions are multiples of the network's padding multiple (16 for windows 4, 8, 16),
so every tile sees the same window grid as the whole image would and all tiles have
one shape (no re-compilation under ``torch.compile``). Neighbouring tiles overlap and
their outputs are cross-faded with linear ramps normalised to sum to one, so there
are no seams. Output rows are finalised one row of tiles at a time: besides the
network's working set for one tile, memory holds the input, the output image in its
final integer type and two float strips of one tile's height.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from elan_arch.utils.errors import ElanError

#: Tile size (LR pixels) used by ``elan upscale --tile`` without a value.
DEFAULT_TILE = 256
#: Overlap (LR pixels) between neighbouring tiles.
DEFAULT_OVERLAP = 32


def compile_network(net: nn.Module, mode: Optional[str]) -> nn.Module:
    """``torch.compile(net)`` in ``mode`` (one of torch.compile's modes, :data:`elan_arch.cli.options.COMPILE_MODES`)
    for fixed shapes, or ``net`` for None."""
    return net if mode is None else torch.compile(net, dynamic=False, mode=mode)


def select_device(name: str, half: bool) -> Tuple[torch.device, torch.dtype]:
    """Device and dtype for ``--device {auto,cpu,cuda}`` and ``--half``; ElanError if unavailable."""
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    if name.startswith('cuda') and not torch.cuda.is_available():
        raise ElanError(f'--device {name}: no CUDA device is available to PyTorch here; use --device cpu')
    device = torch.device(name)
    if half and device.type != 'cuda':
        raise ElanError('--half needs a CUDA device (half precision is slow or unsupported on CPU); '
                        'drop --half or pass --device cuda')
    return device, (torch.float16 if half else torch.float32)


def prepare_network(net: nn.Module, device: torch.device, dtype: torch.dtype,
                    compile_mode: Optional[str] = None) -> nn.Module:
    """``net`` in eval mode (so ELAN runs its fast path) on ``device`` in ``dtype``, compiled in ``compile_mode``
    unless None (:func:`compile_network`)."""
    return compile_network(net.eval().to(device=device, dtype=dtype), compile_mode)


def tile_starts(size: int, tile: int, overlap: int, align: int) -> Tuple[List[int], int]:
    """Start positions and length of the tiles along one axis of length ``size``.

    ``size`` must be a multiple of ``align``; the tile length is ``tile`` rounded up to
    ``align`` (at most ``size``) and consecutive starts are multiples of ``align`` at
    least ``overlap`` apart from the previous tile's end, the last tile ending at ``size``.
    """
    length = min(-(-tile // align) * align, size)
    stride = max(align, (length - overlap) // align * align)
    return list(range(0, size - length, stride)) + [size - length], length


def blend_weights(starts: List[int], length: int, scale: int) -> List[Tensor]:
    """Per-tile 1-D weights (output resolution) that cross-fade overlaps and sum to one everywhere.

    Each tile ramps up linearly over its overlap with the previous tile and down over
    its overlap with the next one (flat at the image borders); the ramps are then
    divided by their sum at each position.
    """
    n_out = (starts[-1] + length) * scale
    ramps = []
    for k, start in enumerate(starts):
        ramp = torch.ones(length * scale, dtype=torch.float64)
        rise = (starts[k - 1] + length - start) * scale if k > 0 else 0
        fall = (start + length - starts[k + 1]) * scale if k + 1 < len(starts) else 0
        if rise > 0:
            ramp[:rise] = torch.minimum(ramp[:rise], (torch.arange(rise) + 0.5) / rise)
        if fall > 0:
            ramp[-fall:] = torch.minimum(ramp[-fall:], (fall - 0.5 - torch.arange(fall)) / fall)
        ramps.append(ramp)
    total = torch.zeros(n_out, dtype=torch.float64)
    for start, ramp in zip(starts, ramps):
        total[start * scale:(start + length) * scale] += ramp
    return [(ramp / total[s * scale:(s + length) * scale]).float() for s, ramp in zip(starts, ramps)]


def _to_image(t: Tensor, dtype: np.dtype) -> np.ndarray:
    """(C, h, w) float in [0, 1] (clamped here) -> C-contiguous (h, w, C) array of ``dtype`` (integers rounded)."""
    t = t.float().clamp(0, 1)
    if np.issubdtype(dtype, np.integer):
        t = (t * float(np.iinfo(dtype).max)).round()
    return t.permute(1, 2, 0).contiguous().cpu().numpy().astype(dtype)


def placement(net: Callable[[Tensor], Tensor]) -> Tuple[torch.device, torch.dtype]:
    """Device and dtype that ``net``'s inputs need: its parameters' for a module, else its
    ``device``/``dtype`` attributes (e.g. :class:`elan_arch.deploy.onnx_runtime.OnnxNetwork`)."""
    if isinstance(net, nn.Module):
        param = next(net.parameters())
        return param.device, param.dtype
    return net.device, net.dtype


def upscale_array(net: Callable[[Tensor], Tensor], img: np.ndarray, scale: int, pad_multiple: int, tile: int = 0,
                  overlap: int = DEFAULT_OVERLAP, out_dtype: type = np.uint8, progress: bool = False) -> np.ndarray:
    """Super-resolve one image.

    Args:
        net: The network, in eval mode, on its device and dtype (see :func:`prepare_network`), or
            another callable on (B, C, H, W) tensors with ``device``/``dtype`` (see :func:`placement`).
        img: (H, W, C) float32 RGB in [0, 1].
        scale: The network's upscale factor.
        pad_multiple: The network's size multiple (``ELAN.pad_multiple``).
        tile: Tile size in input pixels; 0 runs the whole image at once.
        overlap: Minimum overlap of neighbouring tiles in input pixels.
        out_dtype: ``np.uint8``/``np.uint16`` (rounded) or ``np.float32`` (clamped to [0, 1]).
        progress: Show a tqdm bar over the tiles.

    Returns:
        (H*scale, W*scale, C) array of ``out_dtype``.
    """
    from elan_arch.archs.elan_blocks import pad_to_multiple

    device, dtype = placement(net)
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
    h, w = img.shape[:2]
    with torch.inference_mode():
        if tile <= 0:
            return _to_image(net(x.to(device, dtype))[0][:, :h * scale, :w * scale], out_dtype)
        x = pad_to_multiple(x, pad_multiple)
        out = np.empty((h * scale, w * scale, img.shape[2]), dtype=out_dtype)
        ys, tile_h = tile_starts(x.shape[2], tile, overlap, pad_multiple)
        xs, tile_w = tile_starts(x.shape[3], tile, overlap, pad_multiple)
        wy = [r.to(device).view(1, -1, 1) for r in blend_weights(ys, tile_h, scale)]
        wx = [r.to(device) for r in blend_weights(xs, tile_w, scale)]
        pending: Optional[Tensor] = None  # blended output rows [pending_top, pending_top + tile_h*scale)
        pending_top = 0
        with tqdm(total=len(ys) * len(xs), unit='tile', disable=not progress, leave=False) as bar:
            for y0, ramp_y in zip(ys, wy):
                strip = torch.zeros(x.shape[1], tile_h * scale, x.shape[3] * scale, device=device)
                for x0, ramp_x in zip(xs, wx):
                    y = net(x[..., y0:y0 + tile_h, x0:x0 + tile_w].to(device, dtype))[0]
                    strip[:, :, x0 * scale:(x0 + tile_w) * scale].addcmul_(y.float(), ramp_x)
                    bar.update()
                strip.mul_(ramp_y)
                top = y0 * scale
                if pending is not None:
                    done = top - pending_top  # rows no later tile reaches
                    strip[:, :pending.shape[1] - done] += pending[:, done:]
                    out[pending_top:top] = _to_image(pending[:, :done, :w * scale], out_dtype)[:h * scale - pending_top]
                pending, pending_top = strip, top
            out[pending_top:] = _to_image(pending[:, :h * scale - pending_top, :w * scale], out_dtype)
        return out
