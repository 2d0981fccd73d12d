"""``python -m elan_arch`` is the ``elan`` command."""
import sys

from elan_arch.cli import main

sys.exit(main())
