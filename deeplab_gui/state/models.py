"""The model panel's work off the UI thread: loading weights, pre-labelling, checking the catalog.

Plain functions run through ``session.run_task`` (they take ``progress``/``cancel`` keywords where the
task reports progress or can stop); nothing here touches a widget. The only Qt is ``BatchRelay``, whose
queued signal hands the shown image's prediction from the batch thread to the UI thread.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PySide6.QtCore import QObject, Signal

import engine
from engine.weights import catalog

__all__ = ["LoadedModel", "BatchRelay", "device_description", "display_name",
           "load_catalog", "load_file", "predict_one", "predict_batch", "catalog_state", "folder_default"]

log = logging.getLogger("deeplab_gui")


def device_description() -> str:
    """"NVIDIA H100 (80 GB)" for the first CUDA device, else "CPU"."""
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GB)"
    return "CPU"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    model_id: str
    spec: str  # what to remember in settings: a catalog id or a file path


def display_name(spec: str | None) -> str:
    """What to call loaded weights: a file's name ("/x/tiny.safetensors" -> "tiny.safetensors"); a catalog id as is."""
    if not spec:
        return ""
    return spec if spec in catalog.CATALOG else Path(spec).name


def load_catalog(entry_id: str, *, progress, cancel) -> LoadedModel:
    def bytes_progress(done: int, total: int | None) -> None:
        # Qt progress is int32: report kilobytes so a 250 MB file fits.
        progress(done >> 10, (total or 0) >> 10)
    model = catalog.load_catalog_model(entry_id, progress=bytes_progress, cancel=cancel)
    # The file's identity, as the command line computes it, so both share cached probabilities.
    return LoadedModel(model, engine.checkpoint_id(catalog.weights_path(entry_id)), entry_id)


def load_file(path: str, arch: str | None, *, progress) -> LoadedModel:
    progress(0, 0)
    try:
        model = engine.load_model(path)  # format and architecture from the keys
    except engine.CheckpointError:
        if not arch:
            raise
        model = engine.load_model(path, arch=arch)  # keys ambiguous: the combo's architecture decides
    return LoadedModel(model, engine.checkpoint_id(path), str(path))


def predict_one(predictor, image: np.ndarray, name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(H×W uint8 labels, C×h×w float32 probabilities on the store's capped grid): what the store
    keeps, so a huge image never has C×H×W probabilities in memory (see engine.probgrid).
    ``name``: the image's id, named in the error when the image is too small to segment."""
    from engine.predictor import ImageTooSmallError
    try:
        pred = predictor.predict_with_probs(image)
    except ImageTooSmallError as exc:
        if name is None or exc.path is not None:
            raise
        raise ImageTooSmallError(exc.reason, name) from None
    return pred.labels, pred.probs


class BatchRelay(QObject):
    """Hands the current image's prediction from the batch worker thread to the UI thread."""

    current_done = Signal(str, object, object)  # image id, labels HxW uint8, probs Cxhxw float32 (capped grid)


def predict_batch(predictor, store, ids: list[str], model_id: str, current: list, relay: BatchRelay, *,
                   progress, cancel) -> dict:
    """Pre-label ``ids``: predict, then save through the store (which refuses to overwrite a person's
    mask). The image shown in the app (``current[0]``, read live) is handed to the UI thread instead, so
    the session applies it to the open document as one undo step. Each image costs what
    ``Predictor.predict_with_probs`` holds (labels plus capped-grid probabilities), plus the next image
    being read ahead."""
    done = saved = failed = 0
    progress(0, len(ids))
    paths = [store.image_path(i) for i in ids]
    by_path = dict(zip(map(str, paths), ids))
    for key, result in predictor.predict_many([str(p) for p in paths], cancel=cancel, prediction=True):
        image_id = by_path[key]
        done += 1
        if isinstance(result, Exception):
            failed += 1
            store.record_error(image_id, str(result))
        else:
            labels, probs = result.labels, result.probs
            if image_id == current[0]:
                relay.current_done.emit(image_id, labels, probs)
                saved += 1
            elif store.save_prediction(image_id, labels, probs=probs, model_id=model_id):
                saved += 1
            else:
                store.save_probs(image_id, probs, model_id=model_id)  # a person's mask: keep only probs
            del labels, probs
        del result  # none of this image's arrays is held while the next one is predicted
        progress(done, len(ids))
    return {"done": done, "saved": saved, "failed": failed, "total": len(ids)}


def catalog_state() -> dict[str, bool]:
    """Which segmentation weights are on disk (hashing a file takes ~1 s: worker thread)."""
    return {e.id: catalog.is_downloaded(e) for e in catalog.list_weights("segmentation")}


def folder_default(store, last: str | None, downloaded: dict[str, bool]) -> tuple[str, str] | None:
    """What to load on opening a folder: ``(path, "folder")`` for its current fine-tuned version (trained
    on these very labels), else ``(spec, "last")`` for the weights used last time when they are on this
    machine (never a download), else None. Reads the folder's versions.json: worker thread."""
    if store is not None:
        from engine.store.versions import Versions
        try:
            path = Versions.of(store).current_path()
        except (OSError, ValueError) as exc:  # an unreadable index: say so, fall back to the last weights
            log.warning("cannot read the folder's model versions: %s", exc)
            path = None
        if path is not None and Path(path).is_file():
            engine.checkpoint_id(path)  # hashed here, so the UI thread's comparison is answered from memory
            return str(path), "folder"
    if last and (downloaded.get(last) or (last not in catalog.CATALOG and Path(last).is_file())):
        return last, "last"
    return None
