"""``python -m trainer FOLDER ...`` and ``torchrun --nproc_per_node=N -m trainer FOLDER ...`` (DDP)."""
from __future__ import annotations

import argparse
import os
import sys

from engine import one_line

from .cli import add_train_arguments, run_training

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line (argparse adds a usage block), exit status 2 as usual
        print(f"{self.prog}: error: {one_line(message)}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="python -m trainer",
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
        # The expected failures (bad input, a diverged run, a file system error) carry their own
        # one-line reason; only a surprise keeps its Python name, for the bug report.
        expected = isinstance(exc, (ValueError, OSError, RuntimeError, LookupError))
        why = one_line(exc)
        print(f"{where}: {why}" if expected else f"{where}: {type(exc).__name__}: {why}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
