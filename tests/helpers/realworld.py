"""Helpers of the real-world training tests: a tiny HR-only set in the layout BasicSR's ``RealESRGANDataset``
reads (a folder of HR images and a meta_info file listing them), built from the photos bundled with
scikit-image, and the option overrides that make a Real-ESRNet/Real-ESRGAN run take seconds on a CPU."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List

import cv2
import torch

from elan_arch.prepare.demo_data import TRAIN_PHOTOS, skimage_photo

REPO = Path(__file__).resolve().parents[2]
REALWORLD = REPO / 'options' / 'realworld'
HR_FOLDER = 'datasets/realworld_tiny'
META_INFO = f'{HR_FOLDER}/meta_info.txt'
CROP = 400  # RealESRGANDataset's crop (pads smaller images)


def realworld_root(root: Path, photos: int = 4) -> Path:
    """``root/datasets/realworld_tiny``: the first ``photos`` training photos of the demo, each cut to at most
    400x400 (the dataset's crop), as PNG, with ``meta_info.txt`` listing them (one relative path a line)."""
    folder = root / HR_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for name in TRAIN_PHOTOS[:photos]:
        img = cv2.imread(str(skimage_photo(name)), cv2.IMREAD_COLOR)
        out = f'{Path(name).stem}.png'
        assert cv2.imwrite(str(folder / out), img[:CROP, :CROP])
        names.append(out)
    (root / META_INFO).write_text(''.join(f'{name}\n' for name in names))
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

