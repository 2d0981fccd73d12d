"""``python -m elan_arch.demo``: see :mod:`elan_arch.demo.run`."""
import sys

from elan_arch.demo.run import main

sys.exit(main())
