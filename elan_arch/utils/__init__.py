"""Small pieces every part of the package shares.

* :mod:`~elan_arch.utils.basicsr_compat`: makes basicsr 1.4.2 importable with current torchvision;
  ``import elan_arch`` applies it before anything imports basicsr.
* :mod:`~elan_arch.utils.errors`: :class:`~elan_arch.utils.errors.ElanError`, the one exception the
  ``elan`` and ``basicsr`` commands print as a message (exit status 2) instead of a traceback.
* :mod:`~elan_arch.utils.fileio`: atomic output (write to a temporary sibling, rename on success).
* :mod:`~elan_arch.utils.images`: reading, checking and writing image files (PNG, bicubic resizing).
* :mod:`~elan_arch.utils.extras`: optional dependencies, imported with the pip extra named.
* :mod:`~elan_arch.utils.cpu_tuning`: process settings both commands apply first (glibc ``malloc``
  tuning, denormals flushed).
"""
