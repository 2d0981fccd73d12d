"""The one place a runtime is chosen (elan_arch/inference/backends.py): selection errors, bfloat16 on the CPU
(its refusal on a CPU without native bfloat16, simulated), and the outputs of a bfloat16 network."""
from __future__ import annotations

import builtins

import pytest
import torch

import elan_arch  # noqa: F401  (before basicsr)
from elan_arch import ELAN, ELAN_VARIANTS
from elan_arch.cli import main
from elan_arch.inference import backends
from elan_arch.inference.backends import bf16_unsupported_reason, load_backend
from elan_arch.utils import cpu_tuning
from elan_arch.utils.errors import ElanError
from helpers.inference import calibrated, photo, to_tensor

SMALL_LIGHT = dict(ELAN_VARIANTS['ELAN-light'], m_elan=4)


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    torch.manual_seed(0)
    net = calibrated(ELAN(upscale=2, **SMALL_LIGHT), to_tensor(photo(32, 48)))
    path = tmp_path_factory.mktemp('backends') / 'net.pth'
    torch.save({'params': net.state_dict()}, path)
    return net, path


def no_bf16_cpu(monkeypatch):
    """This process sees a CPU with AVX-512 but without avx512_bf16/amx_bf16."""
    monkeypatch.setattr(cpu_tuning, 'cpu_flags', lambda: {'fpu', 'avx2', 'avx512f', 'avx512bw'})


def test_exactly_one_model(weights, tmp_path):
    with pytest.raises(ElanError, match='exactly one model.*given: none'):
        load_backend()
    with pytest.raises(ElanError, match=r'given: --weights, --onnx'):
        load_backend(weights=str(weights[1]), onnx=str(tmp_path / 'm.onnx'))


def test_options_that_do_not_apply_to_an_exported_model(tmp_path):
    with pytest.raises(ElanError, match=r'--half/--compile: not for --onnx'):
        load_backend(onnx=str(tmp_path / 'm.onnx'), half=True, compile_mode='default')
    with pytest.raises(ElanError, match='--bf16: not for --onnx'):
        load_backend(onnx=str(tmp_path / 'm.onnx'), bf16=True)
    with pytest.raises(ElanError, match='--window-sizes.*do not apply to --openvino'):
        load_backend(openvino=str(tmp_path / 'm.xml'), overrides={'window_sizes': [8]})
    with pytest.raises(ElanError, match='runs on the CPU only'):
        load_backend(openvino=str(tmp_path / 'm.xml'), device='cuda')


def test_missing_extra_names_the_pip_line(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == 'openvino' or name.startswith('openvino.'):
            raise ImportError(f'No module named {name!r}')
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, '__import__', no_openvino)
    monkeypatch.delitem(__import__('sys').modules, 'openvino', raising=False)
    (tmp_path / 'm.xml').write_text('<net/>')
    with pytest.raises(ElanError, match=r"needs the Python package 'openvino'.*pip install -e '\.\[openvino\]'"):
        load_backend(openvino=str(tmp_path / 'm.xml'))


def test_scale_checked(weights):
    with pytest.raises(ElanError, match=r'holds an x2 ELAN but --scale 4'):
        load_backend(weights=str(weights[1]), device='cpu', scale=4)


def test_half_and_bf16_refusals():
    with pytest.raises(ElanError, match='--half .*needs a CUDA device'):
        backends.torch_dtype(torch.device('cpu'), half=True, bf16=False)
    with pytest.raises(ElanError, match='give one'):
        backends.torch_dtype(torch.device('cpu'), half=True, bf16=True)


def test_bf16_refused_on_a_cpu_without_native_bfloat16(weights, monkeypatch, tmp_path, capsys):
    no_bf16_cpu(monkeypatch)
    assert 'no native bfloat16' in bf16_unsupported_reason()
    with pytest.raises(ElanError, match=r'--bf16: this CPU has no native bfloat16 .*drop --bf16'):
        load_backend(weights=str(weights[1]), device='cpu', bf16=True)
    src = tmp_path / 'in.png'
    import cv2
    import numpy as np

    cv2.imwrite(str(src), (photo(16, 16) * 255).round().astype(np.uint8))
    assert main(['upscale', '-i', str(src), '-o', str(tmp_path / 'out.png'), '--weights', str(weights[1]),
                 '--device', 'cpu', '--bf16', '--quiet']) == 2
    err = capsys.readouterr().err
    assert 'elan upscale: error: --bf16: this CPU has no native bfloat16' in err and 'Traceback' not in err
    assert not (tmp_path / 'out.png').exists()
    monkeypatch.setattr(cpu_tuning, 'cpu_flags', lambda: None)
    assert 'cannot read' in bf16_unsupported_reason()


def test_float32_is_the_default_and_runs_the_fast_path(weights):
    net, path = weights
    backend = load_backend(weights=str(path), device='cpu')
    assert backend.kind == 'torch' and backend.where == 'cpu (PyTorch, float32)'
    x = to_tensor(photo(19, 13))
    with torch.inference_mode():
        assert torch.equal(backend.net(x), net(x))


@pytest.mark.skipif(bf16_unsupported_reason() is not None, reason='this CPU has no native bfloat16')
def test_bf16_network_close_to_float32(weights):
    # bfloat16 keeps 8 significant bits: outputs move by a few 8-bit levels, not more (measured on photos:
    # docs/deployment.md); the attention logits stay float32 (window_ops), without which they are far off
    net, path = weights
    backend = load_backend(weights=str(path), device='cpu', bf16=True)
    assert backend.kind == 'torch-bf16' and next(backend.net.parameters()).dtype == torch.bfloat16
    x = to_tensor(photo(40, 56))
    with torch.inference_mode():
        expected = net.float()(x)
        got = backend.net(x.bfloat16()).float()
    levels = ((got.clamp(0, 1) - expected.clamp(0, 1)).abs() * 255)
    assert 0 < levels.max() < 8 and levels.mean() < 1
