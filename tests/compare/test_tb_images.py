"""``val.tb_images``: validation images that TensorBoard's own event reader finds, for ELANModel and (through the
basicsr command's fixes) BasicSR's SRModel; nothing written without the option."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import subprocess
import sys

import cv2
import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

import elan_arch  # noqa: F401  (before basicsr)
from basicsr.data import build_dataloader, build_dataset
from basicsr.models import build_model
from tensorboard.backend.event_processing import event_accumulator

from elan_arch.models.tb_images import CROP, GAP, tb_images_count, with_tb_images
from elan_arch.utils.errors import ElanError

SMALL_ELAN = dict(type='ELAN', upscale=4, c_elan=15, m_elan=4, n_share=1, r_expand=2, window_sizes=[4, 8, 16])


def val_set(root: Path, sizes=((20, 24), (60, 56), (16, 16))) -> Dict[str, Any]:
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        gt = cv2.GaussianBlur(rng.uniform(0, 255, (h * 4, w * 4, 3)).astype(np.uint8), (5, 5), 0)
        for sub, img in (('gt', gt), ('lq', cv2.resize(gt, (w, h), interpolation=cv2.INTER_AREA))):
            (root / sub).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / sub / f'im{i}.png'), img)
    return {'name': 'tiny_val', 'type': 'PairedImageDataset', 'dataroot_gt': str(root / 'gt'),
            'dataroot_lq': str(root / 'lq'), 'io_backend': {'type': 'disk'}, 'phase': 'val', 'scale': 4}


def model_opt(tmp_path: Path, model_type: str, tb_images: Any = None) -> Dict[str, Any]:
    val: Dict[str, Any] = {'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True}}}
    if tb_images is not None:
        val['tb_images'] = tb_images
    return {'name': 'tb', 'model_type': model_type, 'scale': 4, 'num_gpu': 0, 'dist': False, 'rank': 0,
            'world_size': 1, 'is_train': False, 'network_g': dict(SMALL_ELAN),
            'path': {'pretrain_network_g': None, 'visualization': str(tmp_path / 'vis')}, 'val': val}


def validate(tmp_path: Path, model_type: str, tb_images: Any, steps=(10, 20)):
    """Validate twice (iterations ``steps``) into a fresh TensorBoard log; its events as TensorBoard reads them,
    and the validation images' names in the loader's order."""
    model = build_model(model_opt(tmp_path, model_type, tb_images))
    loader = build_dataloader(build_dataset(val_set(tmp_path / 'data')), {'phase': 'val'})
    log_dir = tmp_path / 'tb_logger'
    writer = SummaryWriter(log_dir=str(log_dir))
    for step in steps:
        model.validation(loader, step, writer, save_img=False)
    writer.close()
    events = event_accumulator.EventAccumulator(str(log_dir), size_guidance={event_accumulator.IMAGES: 0})
    events.Reload()
    return events, [Path(p['lq_path']).stem for p in loader.dataset.paths]


def decoded(image_event) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(image_event.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)


@pytest.mark.parametrize('model_type', ['ELANModel', 'SRModel'])
def test_first_n_images_logged_at_each_validation(tmp_path, model_type, monkeypatch):
    if model_type == 'SRModel':  # BasicSR's own model, its validation wrapped as the basicsr command wraps it
        from basicsr.models.sr_model import SRModel

        monkeypatch.setattr(SRModel, 'nondist_validation', with_tb_images(SRModel.nondist_validation))
    events, order = validate(tmp_path, model_type, 2)
    tags = events.Tags()
    assert 'metrics/tiny_val/psnr' in tags['scalars']  # BasicSR's scalars are still there
    assert sorted(tags['images']) == sorted(f'val_images/tiny_val/{name}' for name in order[:2])
    for name in order[:2]:
        logged = events.Images(f'val_images/tiny_val/{name}')
        gt = cv2.imread(str(tmp_path / 'data' / 'gt' / f'{name}.png'))
        h, w = min(gt.shape[0], CROP), min(gt.shape[1], CROP)
        assert [e.step for e in logged] == [10, 20]
        assert (logged[0].height, logged[0].width) == (h, 3 * w + 2 * GAP)
        top, left = (gt.shape[0] - h) // 2 // 4 * 4, (gt.shape[1] - w) // 2 // 4 * 4
        assert np.array_equal(decoded(logged[-1])[:, -w:], gt[top:top + h, left:left + w])  # right: the GT crop


def test_basicsr_command_wraps_srmodel_validation():
    code = ('import elan_arch; from elan_arch.training import basicsr_fixes; basicsr_fixes.apply(); '
            'from basicsr.models.sr_model import SRModel; from elan_arch.models.elan_model import ELANModel; '
            'assert SRModel.nondist_validation.logs_tb_images and ELANModel.nondist_validation.logs_tb_images; '
            'import basicsr.models.srgan_model as g; assert g.SRGANModel.nondist_validation.logs_tb_images')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_nothing_logged_without_the_option(tmp_path):
    events, _ = validate(tmp_path, 'ELANModel', None)
    assert events.Tags()['images'] == []
    assert 'metrics/tiny_val/psnr' in events.Tags()['scalars']


@pytest.mark.parametrize('value, count', [(None, 0), (False, 0), (0, 0), (3, 3)])
def test_option_values(value, count):
    assert tb_images_count({'val': {'tb_images': value}}) == count
    assert tb_images_count({}) == 0


@pytest.mark.parametrize('value', [-1, 'four', 2.5, True])
def test_bad_option_named(tmp_path, value):
    with pytest.raises(ElanError, match='val.tb_images'):
        validate(tmp_path, 'ELANModel', value, steps=(1, ))
