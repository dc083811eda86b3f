"""Body of ``deeplab-gui train FOLDER [--weights CKPT] [--iterations N] [--crop S] [--out CKPT] ...``.

The parser in cli.py defines FOLDER, --weights, --iterations, --crop and --out; it may add the rest
with :func:`add_arguments` (learning rate, batch size, time budget, device, --confirm ...).  Missing
optional attributes fall back to the recipe's defaults, so either parser works.
"""
from __future__ import annotations

import argparse

__all__ = ["cmd_train", "add_arguments"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the optional train knobs beyond the five the base parser defines."""
    from trainer.cli import add_train_arguments
    add_train_arguments(parser, positional=False)


def cmd_train(args: argparse.Namespace) -> int:
    """Fine-tune on FOLDER's edited/reviewed masks; progress on stderr, checkpoint path on stdout.

    Returns 0 when a new checkpoint was written, 130 when interrupted.  Failures raise CLIError
    (one line, exit 1; 2 for an option value out of range) as the other commands do.
    """
    from pathlib import Path

    from trainer.cli import recipe_from_args, run_training
    from trainer.loop import TrainError

    from .errors import CLIError
    if not Path(args.folder).is_dir():
        raise CLIError(f"{args.folder}: not a folder", 2)  # a usage error, like the other commands
    for name, default in (("device", "auto"), ("confirm", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    try:  # a value out of range (--iterations 0, say) is a usage error too, caught before any loading
        recipe_from_args(args)
    except ValueError as exc:
        raise CLIError(str(exc), 2) from None
    try:
        return run_training(args)
    except (ValueError, TrainError, OSError, RuntimeError, LookupError) as exc:  # each says why in one line
        raise CLIError(str(exc)) from None
