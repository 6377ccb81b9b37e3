"""``python -m tpo_core.train ...`` / ``accelerate launch -m tpo_core.train ...``: the ``tpo train`` command."""

import sys

from .cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
