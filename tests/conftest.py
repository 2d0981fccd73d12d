"""Test-session set-up: on machines without CUDA (CI), Triton's interpreter, so that the fused attention
kernels of elan_arch/archs/window_kernels.py run on CPU tensors (tests/archs/test_window_kernels.py).
It must be set before Triton is first imported, which importing elan_arch (torchvision) already does."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')
