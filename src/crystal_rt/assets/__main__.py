"""``python -m crystal_rt.assets``: print the demo model's path."""

import sys

from . import demo_model

sys.stdout.write(f"{demo_model()}\n")
