"""``ELANPairedImageDataset``: BasicSR's ``PairedImageDataset`` that checks its data up front."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.utils.registry import DATASET_REGISTRY

from elan_arch.utils.errors import ElanError
from elan_arch.data.lmdb_check import check_lmdb_pair

_FOLDER_HINT = ('create it with `elan prepare benchmark --input <set folder>` (test sets), '
                '`elan prepare div2k --input datasets/DIV2K` or `elan prepare demo`')


def check_dataset_options(opt: Dict[str, Any]) -> None:
    """Raise :class:`ElanError` naming the option at fault if the dataset's files are unusable.

    LMDB backend: :func:`check_lmdb_pair` on ``dataroot_gt``/``dataroot_lq`` at ``scale``. Other
    backends: both folders (and ``meta_info_file`` when given) must exist.
    """
    name = opt.get('name', 'dataset')
    for key in ('dataroot_gt', 'dataroot_lq', 'io_backend'):
        if not opt.get(key):
            raise ElanError(f'dataset {name}: option {key} is missing; set it in the option file')
    if opt['io_backend'].get('type') == 'lmdb':
        if not opt.get('scale'):
            raise ElanError(f'dataset {name}: option scale is missing (BasicSR copies it from the top-level scale)')
        check_lmdb_pair(opt['dataroot_gt'], opt['dataroot_lq'], int(opt['scale']),
                        names=(f'dataset {name}: dataroot_gt', f'dataset {name}: dataroot_lq'))
        return
    for key in ('dataroot_gt', 'dataroot_lq'):
        if not Path(opt[key]).is_dir():
            raise ElanError(f'dataset {name}: {key} {opt[key]} is not a folder; {_FOLDER_HINT}')
    if opt.get('meta_info_file') and not Path(opt['meta_info_file']).is_file():
        raise ElanError(f'dataset {name}: meta_info_file {opt["meta_info_file"]} does not exist; fix the path '
                        f'or remove the option to scan the folders')


@DATASET_REGISTRY.register()
class ELANPairedImageDataset(PairedImageDataset):
    """``PairedImageDataset`` (same options, same items) that runs :func:`check_dataset_options` first.

    Items are ``{'lq': (3, h, w), 'gt': (3, h*scale, w*scale), 'lq_path', 'gt_path'}``, RGB float in [0, 1].
    BasicSR's own pairing errors (unequal folders, missing partners) become :class:`ElanError` too.
    """

    def __init__(self, opt: Dict[str, Any]) -> None:
        check_dataset_options(opt)
        try:
            super().__init__(opt)
        except (AssertionError, ValueError) as err:
            raise ElanError(f'dataset {opt.get("name", "dataset")}: {err}') from err
