"""Helpers of the real-world training tests: a tiny HR-only set made by ``elan prepare realworld`` (its
Python function) from photos bundled with scikit-image, in the layout BasicSR's ``RealESRGANDataset`` reads
(400-pixel crops and a meta_info file), and the option overrides that make a Real-ESRNet/Real-ESRGAN run take
seconds on a CPU."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import List

import torch

from elan_arch.prepare.demo_data import TRAIN_PHOTOS, skimage_photo
from elan_arch.prepare.realworld import prepare_realworld

REPO = Path(__file__).resolve().parents[2]
REALWORLD = REPO / 'options' / 'realworld'
HR_FOLDER = 'datasets/realworld_tiny'  # dataroot_gt, relative to the root
META_INFO = f'{HR_FOLDER}/meta_info/meta_info_photos_sub.txt'


def realworld_root(root: Path, photos: int = 4) -> Path:
    """``root/datasets/realworld_tiny``: the 400-pixel crops (every 200 pixels, no multiscale copies) of the
    first ``photos`` training photos of the demo (each at least 400 pixels on both sides) and their meta_info."""
    folder = root / 'photos'
    folder.mkdir(parents=True, exist_ok=True)
    for name in TRAIN_PHOTOS[:photos]:
        shutil.copy(skimage_photo(name), folder / name)
    prepare_realworld([folder], root / HR_FOLDER, name='photos', multiscale=False, progress=False)
    assert (root / META_INFO).is_file()
    return root


def tiny_overrides(gt_size: int = 64, batch: int = 2, queue: int = 4, iters: int = 2) -> List[str]:
    """``--force_yml`` entries: the tiny set, a two-block ELAN, small patches/batches/queue, no validation, no
    TensorBoard, ``iters`` iterations with a checkpoint at the end, one loader process."""
    return [f'datasets:train:dataroot_gt={HR_FOLDER}', f'datasets:train:meta_info={META_INFO}',
            'datasets:train:num_worker_per_gpu=0', f'datasets:train:batch_size_per_gpu={batch}',
            f'gt_size={gt_size}', f'queue_size={queue}', 'network_g:m_elan=2', 'network_g:c_elan=24',
            f'train:total_iter={iters}', f'train:scheduler:milestones=[{iters}]', 'logger:print_freq=1',
            f'logger:save_checkpoint_freq={iters}', 'logger:use_tb_logger=false', 'num_gpu=0']


def stand_in_vgg19(torch_home: Path) -> Path:
    """Write a VGG19 checkpoint of random weights under ``torch_home/hub/checkpoints`` with the file name and
    keys torchvision's pretrained one has, so BasicSR's ``PerceptualLoss`` runs its real code path offline.

    A stand-in: the real weights cannot be downloaded here; the perceptual loss it gives is meaningless, but
    every layer, shape and call is the real one's."""
    import torchvision

    folder = torch_home / 'hub' / 'checkpoints'
    folder.mkdir(parents=True, exist_ok=True)
    url = torchvision.models.VGG19_Weights.IMAGENET1K_V1.url
    path = folder / os.path.basename(url)
    if not path.exists():
        torch.manual_seed(0)
        torch.save(torchvision.models.vgg19().state_dict(), path)
    return path

