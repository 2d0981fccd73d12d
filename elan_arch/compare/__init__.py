"""``elan compare``: several super-resolution models on test sets, side by side.

The room's modules, in the order a run uses them:

- :mod:`~elan_arch.compare.sets`: test sets (BasicSR's ``GTmod12/`` + ``LRbicx{s}/`` layout, ``HR/`` +
  ``LR_bicubic/X{s}/``, the ``datasets`` of an option file, or any folder of HR images whose LR images are
  made the MATLAB-bicubic way);
- :mod:`~elan_arch.compare.specs` and :mod:`~elan_arch.compare.models`: what ``-m``/``--net`` name and how
  each becomes a callable that upscales an image (bicubic, ELAN checkpoints, exported models, any BasicSR
  arch of an option file's ``network_g``);
- :mod:`~elan_arch.compare.runner`: every model on every image, metrics as ``basicsr test`` computes them,
  outputs streamed to disk image by image;
- :mod:`~elan_arch.compare.page` (``index.html``, with ``static/``), :mod:`~elan_arch.compare.figures`
  (paper-style crops), ``results.csv``/``results.json`` (:mod:`~elan_arch.compare.runner`).

Importing this package imports nothing heavy; :func:`elan_arch.compare.runner.compare` does the work.
"""
