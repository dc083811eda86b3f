"""``python -m deeplab_gui``: the same as the ``deeplab-gui`` command."""
from __future__ import annotations

import sys

from .cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
