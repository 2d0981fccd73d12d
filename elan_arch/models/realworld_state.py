"""What a real-world training run (:mod:`elan_arch.models.realworld`) adds to its training states.

basicsr's real-world models draw their degradations (resize, noise, JPEG quality, the queue's shuffle)
from the process-wide random generators and keep a queue of degraded pairs in memory; a resumed
basicsr run starts with an empty queue and whatever the generators hold after start-up. Here:

* :class:`DegradationStream`: the degradation draws from its own copy of the generators (Python's
  ``random``, NumPy's global generator, torch's CPU generator and, on CUDA, the device's), taken from
  the process's generators at its first use, so the first batches equal basicsr's for the same seed,
  and what else the process draws (a DataLoader's seed at each epoch) never shifts it;
* :func:`gathered_states` / :func:`restore`: every process's queue (pairs, pointer) and stream go into
  the training state's ``realworld`` entry (one per rank, gathered on rank 0) and come back on resume,
  so a resumed run degrades exactly as the uninterrupted one would have. The queue is the larger part:
  ``queue_size x 3 x (gt_size^2 + (gt_size/scale)^2)`` values per process, stored as 8-bit where that is
  exact (the degraded inputs; the HR crops of Real-ESRGAN, not the USM-sharpened ones of Real-ESRNet's
  ``gt_usm``), else float32: at BasicSR's 180 pairs of 256 pixels at x4, about 144 MB per process for
  Real-ESRNet and 38 MB for Real-ESRGAN.

What a resume cannot restore is said in the log: a state without the entry (written by basicsr
itself), another number of processes (ranks without a saved entry start with an empty queue and
their own stream), or a queue of another shape (``gt_size``, ``queue_size``, ``scale`` or batch changed:
it restarts empty).
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch
import torch.distributed as dist

GeneratorState = Dict[str, Any]


def _numpy_state() -> Dict[str, Any]:
    """NumPy's global state with its key array as a tensor (training states load with ``weights_only``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {'name': name, 'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
            'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)}


def capture(device: torch.device) -> GeneratorState:
    """The state of every generator the degradation draws from on ``device``."""
    cuda = torch.cuda.get_rng_state(device) if device.type == 'cuda' else None
    return {'random': random.getstate(), 'numpy': _numpy_state(), 'torch': torch.get_rng_state(), 'cuda': cuda}


def put(state: GeneratorState, device: torch.device) -> None:
    """Set the generators from ``state`` (a CUDA state only where ``device`` is a CUDA device)."""
    version, internal, gauss = state['random']
    random.setstate((version, tuple(internal), gauss))
    numpy = state['numpy']
    np.random.set_state((numpy['name'], numpy['keys'].numpy().astype(np.uint32), numpy['pos'], numpy['has_gauss'],
                         numpy['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    if device.type == 'cuda' and state.get('cuda') is not None:
        torch.cuda.set_rng_state(state['cuda'], device)


class DegradationStream:
    """The generators' state of one model's degradation, swapped in around each degraded batch.

    ``state`` is ``None`` until the first batch, which draws from the process's generators as basicsr
    does; afterwards :meth:`active` sets ``state`` before the batch and keeps what it became, leaving the
    process's generators as they were before the batch.
    """

    def __init__(self) -> None:
        self.state: Optional[GeneratorState] = None

    @contextlib.contextmanager
    def active(self, device: torch.device) -> Iterator[None]:
        outside = capture(device)
        if self.state is not None:
            put(self.state, device)
        try:
            yield
        finally:
            self.state = capture(device)
            put(outside, device)


def pack(images: torch.Tensor) -> Dict[str, torch.Tensor]:
    """``{'uint8': images * 255}`` on the CPU when that holds them exactly (the degraded inputs, which basicsr
    rounds to multiples of 1/255, and unsharpened HR crops of 8-bit images), else ``{'float32': images}``."""
    levels = (images * 255.).round().clamp_(0, 255)
    if torch.equal(levels / 255., images):
        return {'uint8': levels.to(torch.uint8).cpu()}
    return {'float32': images.cpu()}


def unpack(packed: Dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """The float32 images :func:`pack` was given, on ``device``."""
    if 'uint8' in packed:
        return packed['uint8'].to(device).float() / 255.
    return packed['float32'].to(device)


def local_state(model: Any) -> Dict[str, Any]:
    """This process's ``{'stream': generators' state or None, 'queue': {'lr', 'gt', 'ptr'} or None}`` (CPU;
    the queue's images :func:`pack`-ed)."""
    queue = None
    if hasattr(model, 'queue_lr'):
        queue = {'lr': pack(model.queue_lr), 'gt': pack(model.queue_gt), 'ptr': int(model.queue_ptr)}
    stream = getattr(model, 'degradation_stream', None)
    return {'stream': None if stream is None else stream.state, 'queue': queue}


def gathered_states(model: Any) -> Optional[List[Dict[str, Any]]]:
    """Every rank's :func:`local_state`, indexed by rank, on rank 0 (``None`` on the others). A collective
    under ``torch.distributed``: every rank must call it."""
    local = local_state(model)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [local]
    rank = dist.get_rank()
    gathered: Optional[List[Any]] = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object(local, gathered, dst=0)
    return gathered


def warn(message: str) -> None:
    from basicsr.utils import get_root_logger

    get_root_logger().warning(message)


def restore(model: Any, entries: Optional[List[Dict[str, Any]]]) -> None:
    """Give ``model`` its rank's saved queue and stream from a training state's ``realworld`` entries;
    what cannot be restored is logged (see the module docstring)."""
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if entries is None:
        warn('the resumed state holds no training-pair queue or degradation random state (it was not written by '
              'this package\'s real-world models): the queue refills from empty and the degradation draws from '
              'this process\'s generators, so the degraded batches differ from an uninterrupted run')
        return
    if len(entries) != world and rank == 0:
        warn(f'the resumed state was saved by {len(entries)} process(es), this run has {world}: ranks '
              f'{"up to " + str(len(entries) - 1) if len(entries) > 1 else "0"} continue their saved queue and '
              'degradation stream, the others start with an empty queue and their own stream')
    entry = entries[rank] if rank < len(entries) else None
    if entry is None:
        return
    if entry.get('stream') is not None:
        model.degradation_stream.state = entry['stream']
    queue = entry.get('queue')
    if queue is None:
        return
    gt_size, scale = model.opt.get('gt_size'), model.opt.get('scale')
    lr, gt = unpack(queue['lr'], model.device), unpack(queue['gt'], model.device)
    if (lr.shape[0] != model.queue_size or tuple(gt.shape[-2:]) != (gt_size, gt_size)
            or not scale or tuple(lr.shape[-2:]) != (gt_size // scale, gt_size // scale)):
        warn(f'the saved training-pair queue holds {lr.shape[0]} pairs of {tuple(gt.shape[-2:])} pixels, the '
             f'options ask for queue_size {model.queue_size} of gt_size {gt_size}: it refills from empty')
        return
    model.queue_lr, model.queue_gt, model.queue_ptr = lr, gt, queue['ptr']


def fits_batch(model: Any, batch: int) -> bool:
    """Whether a restored, partly filled queue fills up exactly in batches of ``batch`` (basicsr's queue
    only checks ``ptr == queue_size``); :func:`~elan_arch.models.realworld.queue_on_device` empties it if not."""
    return model.queue_ptr == model.queue_size or (model.queue_size - model.queue_ptr) % batch == 0
