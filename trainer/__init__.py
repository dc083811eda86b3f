"""deeplab-gui trainer: fine-tune a DeepLab model on the masks a person edited or reviewed.

No Qt here.  The GUI drives :class:`FineTune` (a generator of :class:`Progress` events with
``cancel()`` and ``result``) from a worker thread; ``deeplab-gui train`` and
``torchrun --nproc_per_node=N -m trainer FOLDER`` drive it from the command line.

Names are imported on first use (PEP 562), so ``import trainer`` and ``trainer.cli`` (argument
definitions for ``deeplab-gui train --help``) do not pay for importing torch.
"""
from __future__ import annotations

from engine.lazy import lazy_exports

_EXPORTS = {
    "classes": ("ClassChange", "adapt_classes", "class_tensor_keys"),
    "dataset": ("Sample", "SegDataset", "labelled_samples", "split_heldout"),
    "loop": ("FineTune", "FineTuneResult", "Progress", "TrainError", "seg_loss"),
    "metrics": ("confusion_matrix", "evaluate", "miou", "per_class_iou"),
    "params": ("freeze_bn_params", "is_backbone_param", "set_train_mode", "split_params"),
    "recipe": ("Recipe", "RecipeError"),
    "schedule": ("poly_lr", "progress_fraction"),
    "start": ("NEW_MODEL_ARCHS", "new_model"),
    "engine.store.versions": ("Version", "VersionError", "Versions"),  # versions live with the store
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
