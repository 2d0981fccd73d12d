"""Distribution ``elan-arch``: ELAN super-resolution as a BasicSR plugin."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name='elan-arch',
    version='0.1.0',
    description='ELAN (Efficient Long-Range Attention Network, ECCV 2022) for BasicSR',
    long_description=(HERE / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.9',
    packages=find_packages(include=['elan_arch', 'elan_arch.*']),
    package_data={'elan_arch.compare': ['static/*.css', 'static/*.js']},  # elan compare's page
    install_requires=[
        'torch>=2.1',
        'torchvision',
        'basicsr==1.4.2',
        'lmdb',
        'opencv-python',
        'numpy',
        'pyyaml',
        'addict',
        'tb-nightly',
        'tqdm',
        'scikit-image',
        'matplotlib',
        'safetensors',
    ],
    extras_require={
        # `elan export` and `elan upscale --onnx` (onnxscript: the torch.export-based exporter, --dynamo;
        # onnxsim: the export's simplification)
        'onnx': ['onnx', 'onnxruntime', 'onnxscript', 'onnxsim'],
        # `import elan_arch.spandrel_support`: ELAN in spandrel (chaiNNer, ComfyUI)
        'spandrel': ['spandrel'],
        # `elan export --format openvino` (converts the ONNX export) and `elan upscale --openvino`
        'openvino': ['onnx', 'onnxruntime', 'onnxscript', 'onnxsim', 'openvino'],
        # playwright drives Debian's chromium (make install-browser) in the page's browser test; no browser download
        'test': ['pytest>=7', 'pytest-timeout', 'ruff', 'onnx', 'onnxruntime', 'onnxscript', 'onnxsim', 'spandrel',
                 'playwright', 'openvino'],
    },
    entry_points={
        'console_scripts': [
            'elan = elan_arch.cli:main',
            'basicsr = elan_arch.cli.basicsr_cmd:main',
        ],
        # BasicSR plugins: the `basicsr` command imports every module of this group before
        # parsing an option file, so archs/models/datasets of several plugins can be mixed.
        'basicsr.plugins': [
            'elan = elan_arch',
        ],
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Image Processing',
    ],
)
