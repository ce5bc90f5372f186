"""``python -m garbage_sorter.training``: the same as ``garbage-sorter train``."""

import sys

from .train import cli

sys.exit(cli())
