"""What a training run does before its first iteration: checks, its folders, and undoing them on failure.

basicsr 1.4.2 creates ``experiments/<name>/`` (renaming an existing one to
``<name>_archived_<time>``) and ``tb_logger/<name>/`` first and only then reads its data, so a run
that fails on a missing dataroot, an LMDB of another scale or an option value leaves empty folders
(and an archive per retry) and a log without the error. With :mod:`elan_arch.training.basicsr_fixes`:

* :func:`check_options` runs before any folder is made (``basicsr.train.load_resume_state`` is the
  last call before them): option values (real-world runs: :mod:`~elan_arch.training.realworld_checks`), every
  dataset's files (LMDB pairs with
  :func:`elan_arch.data.lmdb_check.check_lmdb_pair`) and, after the resume state is chosen,
  :func:`check_pretrained` for the pretrained networks.
* :func:`make_run_folder` replaces basicsr's ``mkdir_and_rename``: it records what it made and
  archived, so that :func:`after_failure` can remove the folders of a start that fails before the
  first iteration and restore the archive; the run is then as if never started. A restarted torchrun
  group reuses its folders instead of archiving them.
* :func:`after_failure` also writes the error into the log if one is left
  (:mod:`~elan_arch.training.notes`).
"""
from __future__ import annotations

import logging
import os
import shutil
from os import path as osp
from typing import Any, Dict, Iterable, List, Optional, Tuple

from elan_arch.training import elastic
from elan_arch.training.network_checks import check_network_options, pretrained_mismatch
from elan_arch.training.notes import note, to_log_files, write_pending_notes
from elan_arch.training.realworld_checks import check_realworld_options
from elan_arch.utils.errors import ElanError
from elan_arch.utils.fileio import shown_path

_MADE: List[Tuple[str, Optional[str]]] = []  # (folder made, where the folder it replaced was archived)


def _positive_int(opt: Dict[str, Any], keys: str, minimum: int = 1) -> None:
    value: Any = opt
    for key in keys.split(':'):
        value = value.get(key) if isinstance(value, dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != int(value) or value < minimum:
        raise ElanError(f'option {keys}: {value!r} must be an integer >= {minimum}')


def _check_scheduler(train_opt: Dict[str, Any]) -> None:
    scheduler = train_opt.get('scheduler') or {}
    periods = scheduler.get('periods')
    if periods is None:
        return
    if not isinstance(periods, list) or not all(isinstance(p, int) and p > 0 for p in periods):
        raise ElanError(f'option train:scheduler:periods: {periods!r} must be a list of positive integers')
    weights = scheduler.get('restart_weights', [1])
    if not isinstance(weights, list) or len(weights) != len(periods):
        raise ElanError(f'option train:scheduler:restart_weights: {weights!r} needs one entry per period '
                        f'(periods: {periods})')
    total = int(train_opt['total_iter'])
    if sum(periods) < total:
        raise ElanError(f'option train:scheduler:periods: {periods} end at iteration {sum(periods)}, before '
                        f'train:total_iter={total}; {scheduler.get("type")} has no learning rate after its last '
                        f'period: make the periods sum to {total}, e.g. --force_yml train:scheduler:periods=[{total}]')


def _check_dataset(phase: str, dataset: Dict[str, Any]) -> None:
    from elan_arch.data.paired_image_dataset import check_dataset_options, report_once

    if dataset.get('dataroot_gt') and dataset.get('dataroot_lq'):
        report_once(check_dataset_options(dataset), note)
        return
    for key, value in dataset.items():
        if key.startswith('dataroot') or key.startswith('meta_info'):
            if value and not osp.exists(value):
                raise ElanError(f'dataset {dataset.get("name", phase)}: {key} {shown_path(value)} does not exist; '
                                'fix the path in the option file')


def check_options(opt: Dict[str, Any]) -> None:
    """Raise :class:`ElanError` naming the option if a value or a dataset's files make the run unable to start."""
    _positive_int(opt, 'train:total_iter')
    _positive_int(opt, 'logger:print_freq')
    _positive_int(opt, 'logger:save_checkpoint_freq')
    if opt.get('val') is not None:
        _positive_int(opt, 'val:val_freq')
    _check_scheduler(opt['train'])
    datasets = opt.get('datasets') or {}
    if 'train' not in datasets:
        raise ElanError('option datasets:train is missing; a training run needs a train dataset')
    _positive_int(opt, 'datasets:train:batch_size_per_gpu')
    _positive_int(opt, 'datasets:train:num_worker_per_gpu', minimum=0)
    for phase, dataset in datasets.items():
        _check_dataset(phase, dataset)
    _check_wandb(opt['logger'])
    check_network_options(opt)
    check_realworld_options(opt)


def check_test_options(opt: Dict[str, Any]) -> None:
    """``basicsr test``: every test set's files, the networks' options and the weights to test must be
    usable before ``results/<name>`` is made (basicsr made it first, and left it empty after the error)."""
    datasets = opt.get('datasets') or {}
    if not datasets:
        raise ElanError('option datasets is empty; a test run needs at least one test set (datasets: test_1: ...)')
    for phase, dataset in datasets.items():
        _check_dataset(phase, dataset)
    check_network_options(opt)
    check_pretrained(opt)


def take_dropped_datasets(argv: List[str]) -> Tuple[List[str], List[str]]:
    """``--force_yml datasets:NAME=~`` (or ``null``) asks to drop a data set, but basicsr's option parsing sets
    it to None and then indexes it (a TypeError). Such entries are taken out of ``argv`` (the flag too, if
    nothing is left after it); returns that argv and the names, which :func:`drop_datasets` removes from the
    parsed options."""
    if '--force_yml' not in argv:
        return argv, []
    start = argv.index('--force_yml') + 1
    end = next((i for i in range(start, len(argv)) if argv[i].startswith('-')), len(argv))
    kept, names = [], []
    for entry in argv[start:end]:
        keys, _, value = entry.partition('=')
        parts = [k.strip() for k in keys.split(':')]
        if len(parts) == 2 and parts[0] == 'datasets' and value.strip() in ('~', 'null', 'None', 'none'):
            names.append(parts[1])
        else:
            kept.append(entry)
    if not names:
        return argv, []
    return argv[:start - (0 if kept else 1)] + kept + argv[end:], names


def drop_datasets(opt: Dict[str, Any], names: List[str]) -> None:
    """Remove the data sets :func:`take_dropped_datasets` found from the parsed options; a name the option file
    does not have is an :class:`ElanError` naming the ones it has."""
    datasets = opt.get('datasets') or {}
    for name in names:
        if name not in datasets:
            raise ElanError(f'--force_yml datasets:{name}=~: the option file has no data set {name!r} (it has '
                            f'{", ".join(datasets) or "none"})')
        del datasets[name]


def _check_wandb(logger_opt: Dict[str, Any]) -> None:
    """basicsr starts wandb when ``logger:wandb:project`` is set: it needs the package and the TensorBoard
    logger (which it syncs), else a traceback after the run's folders exist."""
    import importlib.util

    project = (logger_opt.get('wandb') or {}).get('project')
    if project is None:
        return
    if importlib.util.find_spec('wandb') is None:
        raise ElanError(f'option logger:wandb:project is {project!r}, but the wandb package is not installed; '
                        'pip install wandb, or set project: ~ to log to TensorBoard only')
    if logger_opt.get('use_tb_logger') is not True:
        raise ElanError('option logger:wandb:project is set, and basicsr syncs wandb from TensorBoard: '
                        'set logger:use_tb_logger: true, or project: ~')


def check_devices(opt: Dict[str, Any], visible_gpus: Optional[int] = None) -> None:
    """Refuse a ``num_gpu`` this machine cannot give (basicsr would die in ``model_to_device`` with
    PyTorch's "Found no NVIDIA driver" or "invalid device ordinal").

    ``num_gpu`` (``auto`` is already the count of visible GPUs here) must be an integer from 0 to the
    GPUs PyTorch sees; under a launcher (torchrun, srun) each process uses one GPU, so any positive
    value needs one to be visible. ``visible_gpus`` defaults to ``torch.cuda.device_count()``.
    """
    import torch

    value = opt.get('num_gpu')
    seen = torch.cuda.device_count() if visible_gpus is None else visible_gpus
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ElanError(f'option num_gpu: {value!r} must be auto or an integer >= 0 (0 trains on the CPU)')
    needed = min(value, 1) if opt.get('dist') else value
    if needed > seen:
        fix = ('set num_gpu: 0 to run on the CPU (or --force_yml num_gpu=0)' if seen == 0 else
               f'set num_gpu: {seen} or auto (every visible GPU), or make more GPUs visible (CUDA_VISIBLE_DEVICES)')
        gpus = 'no CUDA GPU' if seen == 0 else f'{seen} CUDA GPU{"s" if seen > 1 else ""}'
        raise ElanError(f'option num_gpu: {value}, but PyTorch sees {gpus} on this machine; {fix}')


def check_pretrained(opt: Dict[str, Any], verified: Iterable[str] = ()) -> None:
    """Every ``path.pretrain_network_*`` must exist, load and, for an ELAN loaded strictly, be of the scale and
    variant configured (:func:`~elan_arch.training.network_checks.pretrained_mismatch`), except ``verified``
    files."""
    from elan_arch.training.resume import read

    for key, value in opt['path'].items():
        if key.startswith('pretrain_network_') and value and value not in verified:
            loaded, why = read(value)
            if why:
                why = 'does not exist' if why == 'missing' else why
                raise ElanError(f'path.{key}: {shown_path(value)} {why}; fix the path or set it to ~')
            mismatch = pretrained_mismatch(opt, key, loaded)
            if mismatch:
                raise ElanError(f'path.{key}: {value} {mismatch}')


def make_run_folder(path: str) -> None:
    """Replacement of basicsr's ``mkdir_and_rename(path)``: the same archive-and-create, recorded for
    :func:`after_failure`; in a restarted torchrun group an existing folder is reused."""
    from basicsr.utils import get_time_str

    if osp.isdir(path) and elastic.group_restarted():
        return
    archived = None
    if osp.exists(path):
        archived = f'{path}_archived_{get_time_str()}'
        print(f'Path already exists. Rename it to {archived}', flush=True)
        os.rename(path, archived)
    os.makedirs(path, exist_ok=True)
    _MADE.append((path, archived))


def after_failure(error: BaseException, started: bool) -> None:
    """A run failed with ``error``: before its first iteration, remove the folders it made (restoring the
    ones it archived); then write the error into the run's log if one is left."""
    if not started:
        while _MADE:
            path, archived = _MADE.pop()
            shutil.rmtree(path, ignore_errors=True)
            if archived:
                os.rename(archived, path)
    write_pending_notes()
    to_log_files(logging.ERROR, f'Training failed: {type(error).__name__}: {error}')
