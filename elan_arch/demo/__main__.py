"""``python -m elan_arch.demo``: :mod:`elan_arch.demo.run`, or with ``--realworld`` :mod:`elan_arch.demo.realworld`
(which has its own options)."""
import sys

if '--realworld' in sys.argv[1:]:
    from elan_arch.demo.realworld import main

    sys.exit(main([arg for arg in sys.argv[1:] if arg != '--realworld']))
from elan_arch.demo.run import main  # noqa: E402

sys.exit(main())
