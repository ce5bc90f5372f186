"""``python -m garbage_sorter``: the same as the ``garbage-sorter`` command."""

import sys

from .cli import main

sys.exit(main())
