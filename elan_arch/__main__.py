"""``python -m elan_arch`` is the ``elan`` command."""
import sys

from .cli import main

sys.exit(main())
