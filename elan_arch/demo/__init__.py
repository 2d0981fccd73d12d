"""``make demo`` / ``python -m elan_arch.demo``: a real, short ELAN-light x4 training and evaluation.

* :mod:`~elan_arch.demo.run`: prepares the demo set (photographs from scikit-image's wheel), runs
  ``basicsr train`` and ``basicsr test`` with ``options/*_demo.yml``, compares with bicubic;
* :mod:`~elan_arch.demo.report`: the pictures it leaves (crops side by side, the PSNR curve).
"""
