"""``ELANPairedImageDataset``: BasicSR's ``PairedImageDataset`` that checks its data up front."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Set

from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.utils import get_root_logger
from basicsr.utils.registry import DATASET_REGISTRY

from elan_arch.utils.errors import ElanError
from elan_arch.utils.fileio import shown_path
from elan_arch.data.lmdb_check import check_lmdb_pair

_FOLDER_HINT = ('this package makes such folders with `elan prepare benchmark --input <set folder>` (test sets), '
                '`elan prepare div2k --input datasets/DIV2K` or `elan prepare demo`')
_REPORTED: Set[str] = set()


def report_once(warnings: List[str], emit: Callable[[str], None]) -> None:
    """``emit`` each warning not reported before in this process (the start-up check and the dataset
    itself check the same data)."""
    for warning in warnings:
        if warning not in _REPORTED:
            _REPORTED.add(warning)
            emit(warning)


def check_dataset_options(opt: Dict[str, Any]) -> List[str]:
    """Raise :class:`ElanError` naming the option at fault if the dataset's files are unusable; return
    one line per finding that training does not depend on (see :mod:`elan_arch.data.lmdb_check`).

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
        summary = check_lmdb_pair(opt['dataroot_gt'], opt['dataroot_lq'], int(opt['scale']),
                                  names=(f'dataset {name}: dataroot_gt', f'dataset {name}: dataroot_lq'))
        return list(summary.warnings)
    for key in ('dataroot_gt', 'dataroot_lq'):
        if not Path(opt[key]).is_dir():
            raise ElanError(f'dataset {name}: {key} {shown_path(opt[key])} is not a folder; fix the path, or '
                            f'{_FOLDER_HINT}')
    if opt.get('meta_info_file') and not Path(opt['meta_info_file']).is_file():
        raise ElanError(f'dataset {name}: meta_info_file {shown_path(opt["meta_info_file"])} does not exist; fix the '
                        f'path or remove the option to scan the folders')
    _check_disk_pairs(opt, name)
    return []


def _check_disk_pairs(opt: Dict[str, Any], name: str) -> None:
    """The GT/LQ file pairs BasicSR's ``PairedImageDataset`` will read from folders (``meta_info_file``'s
    list, or every GT image; the LQ name from ``filename_tmpl``) must all exist: BasicSR would fail at the
    first missing one, in the middle of an epoch, or at start with a bare assertion."""
    from basicsr.data.data_util import paired_paths_from_folder, paired_paths_from_meta_info_file

    tmpl = opt.get('filename_tmpl', '{}')
    rule = (f'with filename_tmpl {tmpl!r} the LQ image of GT <name>.<ext> is {tmpl.replace("{}", "<name>")}.<ext> '
            'in dataroot_lq')
    folders = [opt['dataroot_lq'], opt['dataroot_gt']]
    try:
        if opt.get('meta_info_file'):
            pairs = paired_paths_from_meta_info_file(folders, ['lq', 'gt'], opt['meta_info_file'], tmpl)
        else:
            pairs = paired_paths_from_folder(folders, ['lq', 'gt'], tmpl)
    except (AssertionError, ValueError, IndexError) as err:
        raise ElanError(f'dataset {name}: {err} ({rule})') from err
    if not pairs:
        listed = f' (meta_info_file {opt["meta_info_file"]} lists none)' if opt.get('meta_info_file') else ''
        raise ElanError(f'dataset {name}: no images to read in {shown_path(opt["dataroot_gt"])}{listed}')
    missing = sorted(p for pair in pairs for p in pair.values() if not Path(p).is_file())
    if missing:
        listed = 'meta_info_file lists' if opt.get('meta_info_file') else 'the pairing needs'
        raise ElanError(f'dataset {name}: {len(missing)} file(s) that {listed} do not exist, e.g. {missing[0]} '
                        f'({rule}); fix filename_tmpl or the file names')


@DATASET_REGISTRY.register()
class ELANPairedImageDataset(PairedImageDataset):
    """``PairedImageDataset`` (same options, same items) that runs :func:`check_dataset_options` first
    (its warnings go to BasicSR's log).

    Items are ``{'lq': (3, h, w), 'gt': (3, h*scale, w*scale), 'lq_path', 'gt_path'}``, RGB float in [0, 1].
    BasicSR's own pairing errors (unequal folders, missing partners) become :class:`ElanError` too.
    """

    def __init__(self, opt: Dict[str, Any]) -> None:
        report_once(check_dataset_options(opt), get_root_logger().warning)
        try:
            super().__init__(opt)
        except (AssertionError, ValueError) as err:
            raise ElanError(f'dataset {opt.get("name", "dataset")}: {err}') from err
