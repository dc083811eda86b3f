"""``python -m trainer FOLDER ...`` and ``torchrun --nproc_per_node=N -m trainer FOLDER ...`` (DDP)."""
from __future__ import annotations

import argparse
import os
import sys

from .cli import add_train_arguments, run_training

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer",
                                description="Fine-tune on FOLDER's edited/reviewed masks (torchrun for DDP).")
    add_train_arguments(p)
    args = p.parse_args(argv)
    try:
        return run_training(args)
    except KeyboardInterrupt:
        print("trainer: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, like the deeplab-gui CLI
        if os.environ.get("DEEPLAB_GUI_DEBUG"):
            raise
        rank = os.environ.get("RANK")
        where = f"trainer (rank {rank})" if rank else "trainer"
        print(f"{where}: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
