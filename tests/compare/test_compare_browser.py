"""``elan compare``'s page in a real browser: headless Chromium opens it from disk; every image loads, the slider,
wheel zoom and drag pan respond (both views together, pixelated), the difference view and sorting work, and
nothing is logged as an error. Skipped with the reason where Chromium or playwright is missing, except under CI
(``CI=true``), where `make test` installs them and the test must run."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch

import elan_arch  # noqa: F401  (before basicsr)
from browser_check import check_page, problems, unavailable

from elan_arch.archs.elan_arch import ELAN
from elan_arch.cli import main


@pytest.fixture
def page(tmp_path):
    hr = tmp_path / 'Photos'
    hr.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(120, 160), (96, 96)]):
        small = rng.uniform(0, 255, (h // 8, w // 8, 3)).astype(np.float32)
        cv2.imwrite(str(hr / f'photo{i}.png'), cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 255)
                    .astype(np.uint8))
    torch.manual_seed(0)
    torch.save({'params': ELAN(c_elan=15, m_elan=2).state_dict()}, tmp_path / 'tiny.pth')
    out = tmp_path / 'page'
    assert main(['compare', '--quiet', '--device', 'cpu', '-i', str(hr), '--scale', '4', '-m', 'bicubic',
                 '-m', f'tiny={tmp_path / "tiny.pth"}', '--net', 'name=random,type=ELAN,upscale=4,c_elan=15,m_elan=2',
                 '-o', str(out)]) == 0
    return out / 'index.html'


def test_page_in_chromium(page, tmp_path):
    why = unavailable()
    if why:
        if os.environ.get('CI') == 'true':
            pytest.fail(f'the browser test must run in CI: {why}')
        pytest.skip(why)
    seen = check_page(page, tmp_path / 'screenshot.png')
    assert problems(seen) == []
    assert len(seen['images']) == 2 * (2 + 2 * 3) + 2  # per photo GT, LR, 3 outputs, 3 differences; 2 figures
    assert (tmp_path / 'screenshot.png').stat().st_size > 10_000


def test_problems_are_found():
    """The checks fail on a page that does not respond (so the test above can fail)."""
    still = {'split': 0.5, 'zoom': 1.0, 'x': 0, 'y': 0}
    seen = {'errors': ['console: boom'], 'images': [['a.png', 0]], 'document_images': [], 'rendering': 'auto',
            'start': still, 'after_split': still, 'after_zoom': still, 'after_pan': still, 'clip_start': 'x',
            'clip_after': 'x', 'transforms': ['a', 'b', 'a'], 'side_transforms': ['a'] * 3, 'side_visible': True,
            'diff_src': ['images/a/b/x.png', 'images/a/b/diff_y.png'], 'gains': ['+1.00', '+2.00']}
    assert len(problems(seen)) == 9
