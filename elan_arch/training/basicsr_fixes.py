"""Targeted runtime fixes of basicsr 1.4.2's train/test pipeline, applied by the ``basicsr`` command.

:func:`apply` replaces a few basicsr functions in memory (nothing on disk; plain
``import elan_arch`` applies none of them). Each replacement keeps basicsr's
behaviour wherever basicsr works and only changes the case it gets wrong
(``basicsr.`` omitted below):

- ``utils.dist_util._init_dist_pytorch``: basicsr calls
  ``torch.cuda.set_device(rank % device_count())`` (ZeroDivisionError without a GPU;
  the global rank ignores torchrun's ``LOCAL_RANK``). Replaced by :func:`init_dist_pytorch`:
  ``LOCAL_RANK`` with CUDA, the gloo backend on CPU without it, and the process group built by
  :func:`elastic.init_process_group` (immune to torchrun's stale store on restarts, bounded start-up).
- ``utils.dist_util._init_dist_slurm``: the same ``set_device`` trap, and ``MASTER_PORT``
  defaulting to 29500 for every job. Replaced by :func:`init_dist_slurm`: basicsr's environment
  with a port derived from the job id (:func:`slurm_environment`), then as above.
- ``utils.options.parse_options`` (as ``train.parse_options`` and ``test.parse_options``): a ``num_gpu``
  larger than the GPUs PyTorch sees (``num_gpu: 1``, BasicSR's own option files, on a machine without
  CUDA) died later in ``model_to_device`` with PyTorch's "Found no NVIDIA driver". Wrapped by
  :func:`checked_options`: the parsed options pass :func:`elan_arch.training.startup.check_devices`.
- ``models.base_model.BaseModel.model_ema``: averaged the parameters only, so ``params_ema`` (and the
  validation of every EMA model) kept BatchNorm's initial statistics; wrapped by
  :func:`elan_arch.models.elan_model.ema_with_buffers`, as ``ELANModel`` is.
- ``models.sr_model.SRModel.nondist_validation`` (every SRModel-based model's validation): TensorBoard got
  scalars only. Wrapped by :func:`elan_arch.models.tb_images.with_tb_images`: with ``val.tb_images: N`` the
  first N validation images' crops (bicubic | SR | GT) too; without the option, basicsr's validation unchanged.
- ``models.base_model.BaseModel.model_to_device``: DDP always gets
  ``device_ids=[cuda.current_device()]``, which fails on CPU. CPU DDP gets no ``device_ids``.
- ``models.base_model.BaseModel.save_network`` / ``save_training_state``: written in place,
  so an interrupted write leaves a truncated ``.pth``/``.state`` that ``--auto_resume`` then
  picks. Now written in a hidden temporary folder and renamed into place.
- ``models.base_model.BaseModel.save_network`` also wrote the tensors only, which cannot tell an
  ELAN's window sizes or shifted windows: replaced by :func:`elan_arch.models.saving.save_network`
  (the same file plus ``'network_g'``, the network's record, which ``load_network`` ignores), then
  made atomic as above.
- ``train.load_resume_state`` (the last call before basicsr makes the run's folders): maps the
  state to ``cuda.current_device()`` (fails without CUDA) and dies on a damaged state. Replaced by
  :func:`load_resume_state`: the checks of :mod:`elan_arch.training.startup`, then :mod:`elan_arch.training.resume`
  (newest intact checkpoint, damaged ones moved aside, implied on torchrun restarts).
- ``test.make_exp_dirs``: ``basicsr test`` made ``results/<name>`` before reading its test sets and
  network, and left it empty when one was missing; wrapped by :func:`checked_test_start`.
- ``utils.misc.mkdir_and_rename`` (also ``train.mkdir_and_rename``): replaced by
  :func:`elan_arch.training.startup.make_run_folder` (undone when the start fails; reused on restarts).
- ``models.base_model.BaseModel.resume_training``: the saved scheduler overrode the schedule of the
  options; wrapped by :func:`elan_arch.training.resume.schedule_from_options`.
- ``train.EnlargedSampler`` and ``train.build_dataloader`` / ``train.create_train_val_dataloader``:
  :class:`elan_arch.data.sampler.ResumableSampler` and :class:`~elan_arch.data.sampler.SeededDataset`
  for the training set (basicsr's batch order; augmentation seeded per sample; a resumed run
  continues the interrupted epoch where it stopped).
- ``train.build_model``: a failed download (the VGG of ``perceptual_opt`` on a machine offline) becomes a
  message naming the file and the folder (:func:`explained_downloads`).
- ``models.realesrnet_model.RealESRNetModel`` / ``models.realesrgan_model.RealESRGANModel``
  ``.__init__`` and ``._dequeue_and_enqueue``: ``DiffJPEG``, ``USMSharp`` and the training-pair queue
  were put on CUDA with ``.cuda()`` (no real-world training without a GPU). Replaced by
  :func:`elan_arch.models.realworld.device_neutral_init` and :func:`~elan_arch.models.realworld.queue_on_device`:
  on the model's device; the degradation and the queue are basicsr's code.
- ``utils.img_process_util.filter2D`` (also as ``filter2D`` of the two real-world model modules): its
  ``.view()`` fails on channels-last inputs (DiffJPEG's output on the CPU). Replaced by
  :func:`elan_arch.models.realworld.contiguous_filter2D`: basicsr's on a contiguous copy (same values).
- The same two models' ``feed_data``, ``save_training_state``, ``resume_training``: a resumed run
  started with an empty queue and other random degradations. Now the degradation draws from its own
  random stream, saved with the queue in ``<iter>.state`` (:mod:`elan_arch.models.realworld_state`),
  so a resumed run degrades as the uninterrupted one.
- ``models.sr_model.SRModel.nondist_validation`` (every SR model's validation and ``basicsr test``): every metric
  ran on every set, so PSNR/SSIM on a set without ground truth (``SingleImageDataset``: real low-resolution
  photos) died with a TypeError (``img2`` missing), in training at the first validation. Wrapped by
  :func:`elan_arch.models.val_metrics.gt_free_validation`: such a set gets only the metrics that need no ground
  truth (NIQE), the skipped ones are logged; ``calculate_lpips`` is registered as a metric
  (:func:`elan_arch.models.val_metrics.install`).
- ``train.create_train_val_dataloader``, ``train.build_model``, ``data.worker_init_fn``:
  wrapped, results unchanged, so that SIGINT/SIGTERM save a resumable state
  (:mod:`elan_arch.training.interrupt`).
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
from os import path as osp
from typing import Any, Callable, Dict, Optional

import torch

from elan_arch.training import elastic, notes, resume, startup
from elan_arch.data.sampler import ResumableSampler, SeededDataset, resume_position
from elan_arch.utils.errors import ElanError

_ORIGINALS: Dict[str, Callable] = {}
TORCHRUN_HINT = ('start it with torchrun, e.g. `torchrun --nproc_per_node=2 -m elan_arch.cli.basicsr_cmd train '
                 '-opt FILE --launcher pytorch`')


def init_dist_pytorch(backend: str = 'nccl', **_: Any) -> None:
    """Replacement of ``basicsr.utils.dist_util._init_dist_pytorch`` (see the module docstring).

    With CUDA: ``torch.cuda.set_device(LOCAL_RANK)`` (basicsr's ``RANK % device_count()`` where
    ``LOCAL_RANK`` is unset) and ``backend``. Without CUDA: the gloo backend on CPU.
    """
    missing = [var for var in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT') if var not in os.environ]
    if missing:
        raise ElanError(f'--launcher pytorch: environment variable(s) {", ".join(missing)} not set, so this '
                        f'process was not started by a distributed launcher; {TORCHRUN_HINT}')
    if torch.cuda.is_available():
        default_local = int(os.environ['RANK']) % torch.cuda.device_count()
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', default_local)))
    elif backend != 'gloo':
        print(f'No CUDA device: distributed training on CPU with the gloo backend instead of {backend}.', flush=True)
        backend = 'gloo'
    elastic.init_process_group(backend)


def slurm_environment(environ: Dict[str, str], port: Optional[int] = None) -> Dict[str, str]:
    """The torch.distributed variables basicsr's slurm launcher derives from Slurm's.

    MASTER_ADDR is the first host of ``SLURM_NODELIST`` (via ``scontrol show hostname``), MASTER_PORT
    is ``port``, else the existing MASTER_PORT, else :func:`slurm_port` of ``SLURM_JOB_ID`` (basicsr:
    29500, the same for every job on a node); LOCAL_RANK is ``SLURM_LOCALID`` (basicsr:
    ``SLURM_PROCID % device_count()``, which needs a GPU).
    """
    for var in ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST'):
        if var not in environ:
            raise ElanError(f'--launcher slurm: environment variable {var} is not set; start the job with srun')
    if port is None and 'MASTER_PORT' not in environ and 'SLURM_JOB_ID' not in environ:
        raise ElanError('--launcher slurm: neither MASTER_PORT nor SLURM_JOB_ID is set; export MASTER_PORT (a free '
                        'port on the first node) in the job script')
    host = subprocess.getoutput(f'scontrol show hostname {environ["SLURM_NODELIST"]} | head -n1').strip()
    if not host or ' ' in host:
        raise ElanError(f'--launcher slurm: `scontrol show hostname {environ["SLURM_NODELIST"]}` gave {host!r}; '
                        'run the job through Slurm (srun) on a node where scontrol works')
    proc_id = int(environ['SLURM_PROCID'])
    local_rank = environ.get('SLURM_LOCALID')
    if local_rank is None:
        local_rank = str(proc_id % max(torch.cuda.device_count(), 1))
    return {
        'MASTER_ADDR': host,
        'MASTER_PORT': str(port) if port is not None else environ.get('MASTER_PORT') or str(slurm_port(environ)),
        'WORLD_SIZE': environ['SLURM_NTASKS'],
        'RANK': str(proc_id),
        'LOCAL_RANK': local_rank,
    }


def slurm_port(environ: Dict[str, str]) -> int:
    """``10000 + SLURM_JOB_ID % 20000``: a port per job (two jobs sharing a node rarely collide), below
    Linux's ephemeral range (32768-60999) where the kernel picks ports for outgoing connections."""
    return 10000 + int(environ['SLURM_JOB_ID']) % 20000


def init_dist_slurm(backend: str = 'nccl', port: Optional[int] = None) -> None:
    """Replacement of ``basicsr.utils.dist_util._init_dist_slurm``: :func:`slurm_environment`, then
    :func:`init_dist_pytorch` (so a CPU-only Slurm job falls back to gloo)."""
    os.environ.update(slurm_environment(dict(os.environ), port))
    init_dist_pytorch(backend)


def model_to_device(self: Any, net: torch.nn.Module) -> torch.nn.Module:
    """Replacement of ``BaseModel.model_to_device``: basicsr's on CUDA or without ``dist``; on CPU
    under ``dist``, ``DistributedDataParallel`` without ``device_ids``."""
    if not self.opt['dist'] or self.device.type == 'cuda':
        return _ORIGINALS['model_to_device'](self, net)
    return torch.nn.parallel.DistributedDataParallel(
        net.to(self.device), find_unused_parameters=self.opt.get('find_unused_parameters', False))


def checked_options(parse_options: Callable) -> Callable:
    """Wrap ``basicsr.utils.options.parse_options``: ``--force_yml datasets:NAME=~`` drops that data set
    (:func:`startup.take_dropped_datasets`; basicsr failed with a TypeError), and the options it returns must be
    runnable on this machine (:func:`startup.check_devices`)."""

    @functools.wraps(parse_options)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        argv, sys.argv[1:] = sys.argv[1:], startup.take_dropped_datasets(sys.argv[1:])[0]
        try:
            opt, parsed = parse_options(*args, **kwargs)
        finally:
            dropped, sys.argv[1:] = startup.take_dropped_datasets(argv)[1], argv
        startup.drop_datasets(opt, dropped)
        startup.check_devices(opt)
        return opt, parsed

    return wrapper


def explained_downloads(build_model: Callable) -> Callable:
    """Wrap ``basicsr.train.build_model``: a download that fails while the model is built (BasicSR's
    ``PerceptualLoss`` fetches torchvision's pretrained VGG the first time) becomes a message saying
    which file to put where, instead of urllib's traceback."""

    @functools.wraps(build_model)
    def wrapper(opt: Dict[str, Any]) -> Any:
        import urllib.error

        try:
            return build_model(opt)
        except urllib.error.URLError as err:
            perceptual = (opt.get('train') or {}).get('perceptual_opt')
            what = ''
            if perceptual:
                vgg = perceptual.get('vgg_type', 'vgg19')
                what = (f' (train:perceptual_opt needs torchvision\'s pretrained {vgg} weights: put the file from '
                        f'download.pytorch.org/models/ into {osp.join(torch.hub.get_dir(), "checkpoints")}, '
                        'or remove perceptual_opt)')
            raise ElanError(f'building the model needed a download that failed: {err.reason}{what}') from err

    return wrapper


def _saved_atomically(method: Callable, path_key: str) -> Callable:
    """Wrap a basicsr save method so its files appear under ``opt['path'][path_key]`` only when complete.

    The method writes into a hidden temporary folder inside the destination (basicsr's ``scandir``
    skips hidden entries, so ``--auto_resume`` never sees it); each file is then read back and renamed
    into place. basicsr's ``save_network`` only warns when ``torch.save`` fails (a full disk) and would
    leave a truncated file: a file that does not load is an :class:`ElanError` instead (the run stops;
    the previous checkpoint stays the newest). Rank 0 only, as basicsr's ``@master_only`` methods.
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        if self.opt.get('rank', 0) != 0:
            return
        final = self.opt['path'][path_key]
        os.makedirs(final, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix='.saving-', dir=final) as tmp:
            self.opt['path'][path_key] = tmp
            try:
                method(self, *args, **kwargs)
            finally:
                self.opt['path'][path_key] = final
            for name in os.listdir(tmp):
                why = resume.read(osp.join(tmp, name))[1]
                if why:
                    raise ElanError(f'could not write {osp.join(final, name)} ({why}); is the disk full? The '
                                    'previous checkpoint is intact: make room and continue with --auto_resume')
                os.replace(osp.join(tmp, name), osp.join(final, name))

    return wrapper


def load_resume_state(opt: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Replacement of ``basicsr.train.load_resume_state``: :func:`startup.check_options`, the state of
    :func:`resume.choose_resume_state`, then :func:`startup.check_pretrained` (all before any folder exists)."""
    startup.check_options(opt)
    state = resume.choose_resume_state(opt)
    verified = resume.saved_iteration(opt, state['iter']).networks.values() if state else ()
    startup.check_pretrained(opt, verified)
    return state


def checked_test_start(make_exp_dirs: Callable) -> Callable:
    """Wrap ``basicsr.test.make_exp_dirs`` (the first call of ``basicsr test`` after the options, and the one
    that makes ``results/<name>``): :func:`startup.check_test_options` first, so a missing test set or network
    file is a message and leaves no empty results folder."""

    @functools.wraps(make_exp_dirs)
    def wrapper(opt: Dict[str, Any]) -> Any:
        startup.check_test_options(opt)
        return make_exp_dirs(opt)

    return wrapper


def seeded_train_loader(build_dataloader: Callable) -> Callable:
    """Wrap ``basicsr.data.build_dataloader``: a training set sampled by a :class:`ResumableSampler` is
    read through :class:`SeededDataset`."""

    @functools.wraps(build_dataloader)
    def wrapper(dataset: Any, dataset_opt: Dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if isinstance(kwargs.get('sampler'), ResumableSampler):
            dataset = SeededDataset(dataset)
        return build_dataloader(dataset, dataset_opt, *args, **kwargs)

    return wrapper


def resumable_loaders(create_loaders: Callable) -> Callable:
    """Wrap ``basicsr.train.create_train_val_dataloader``: seed the sampler with ``manual_seed``, place it
    where the resumed state stopped, and copy earlier warnings into the (now existing) log."""

    @functools.wraps(create_loaders)
    def wrapper(opt: Dict[str, Any], logger: Any) -> Any:
        notes.write_pending_notes()
        result = create_loaders(opt, logger)
        loader, sampler = result[0], result[1]
        if isinstance(sampler, ResumableSampler):
            at = resume.resumed_at()
            position = None if at is None else resume_position(*at, len(loader))
            if at is not None and position is None:
                notes.note(f'the state of iteration {at[1]} (epoch {at[0]}) does not fit {len(loader)} iterations '
                             'per epoch (another batch size or world size?): epoch restarts from its first batch')
            sampler.configure(opt['manual_seed'], loader.batch_size, position)
        return result

    return wrapper


def apply() -> None:
    """Install the replacements (idempotent). Called by the ``basicsr`` command before any pipeline runs."""
    if _ORIGINALS:
        return
    import basicsr.data as data
    import basicsr.test as test
    import basicsr.train as train
    import basicsr.utils.dist_util as dist_util
    import basicsr.utils.misc as misc
    from basicsr.models.base_model import BaseModel

    from elan_arch.models import saving
    from elan_arch.models.elan_model import ema_with_buffers
    from elan_arch.models import val_metrics
    from elan_arch.models.realworld import fix_basicsr_models
    from elan_arch.training import interrupt

    _ORIGINALS.update(model_to_device=BaseModel.model_to_device)
    dist_util._init_dist_pytorch = init_dist_pytorch
    dist_util._init_dist_slurm = init_dist_slurm
    BaseModel.model_to_device = model_to_device
    BaseModel.model_ema = ema_with_buffers(BaseModel.model_ema)
    from basicsr.models.sr_model import SRModel
    from elan_arch.models.tb_images import with_tb_images
    SRModel.nondist_validation = with_tb_images(SRModel.nondist_validation)
    train.parse_options = test.parse_options = checked_options(train.parse_options)
    BaseModel.save_network = _saved_atomically(saving.save_network, 'models')
    BaseModel.save_training_state = _saved_atomically(BaseModel.save_training_state, 'training_states')
    BaseModel.resume_training = resume.schedule_from_options(BaseModel.resume_training)
    train.load_resume_state = load_resume_state
    test.make_exp_dirs = checked_test_start(test.make_exp_dirs)
    misc.mkdir_and_rename = train.mkdir_and_rename = startup.make_run_folder
    train.EnlargedSampler = ResumableSampler
    train.build_dataloader = seeded_train_loader(train.build_dataloader)
    train.create_train_val_dataloader = resumable_loaders(train.create_train_val_dataloader)
    train.create_train_val_dataloader = interrupt.remember_sampler(train.create_train_val_dataloader)
    train.build_model = interrupt.stop_with_state(explained_downloads(train.build_model))
    data.worker_init_fn = interrupt.signals_to_main_process(data.worker_init_fn)
    fix_basicsr_models()
    val_metrics.install()
