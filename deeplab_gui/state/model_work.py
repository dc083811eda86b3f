"""The model work that runs off the UI thread: loading weights, pre-labelling, the catalog, versions.

Plain functions without Qt: :class:`~.models.ModelsState` runs them through the session's task runner.
They take ``progress``/``cancel``/``emit`` keywords where they report progress, can stop, or hand a
value to the UI thread (the runner's ``yielded``).  torch and the weights catalog are imported on
first use, so creating a session does not pay for them.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import engine

__all__ = ["LoadedModel", "VersionEntry", "catalog_state", "device_description", "display_name",
           "folder_default", "is_catalog_id", "list_versions", "load_catalog", "load_file", "predict_batch",
           "predict_one", "use_version", "version_text"]

log = logging.getLogger("deeplab_gui")


def device_description() -> str:
    """"NVIDIA H100 (80 GB)" for the first CUDA device, else "CPU"."""
    import torch
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GB)"
    return "CPU"


@dataclass
class LoadedModel:
    model: Any  # torch.nn.Module with its metadata attached
    model_id: str
    spec: str  # what to remember in settings: a catalog id or a file path


def is_catalog_id(spec: str | None) -> bool:
    from engine.weights import catalog
    return bool(spec) and spec in catalog.CATALOG


def display_name(spec: str | None) -> str:
    """What to call loaded weights: a file's name ("/x/tiny.safetensors" -> "tiny.safetensors"); a catalog id as is."""
    if not spec:
        return ""
    return spec if is_catalog_id(spec) else Path(spec).name


def load_catalog(entry_id: str, *, progress, cancel) -> LoadedModel:
    from engine.weights import catalog

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
        model = engine.load_model(path, arch=arch)  # keys ambiguous: the chosen architecture decides
    return LoadedModel(model, engine.checkpoint_id(path), str(path))


def predict_one(predictor, image: np.ndarray, name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(H×W uint8 labels, C×h×w float32 probabilities on the store's capped grid): what the store
    keeps, so a huge image never has C×H×W probabilities in memory (see engine.probgrid).
    ``name``: the image's id, named in the error when the image is too small to segment."""
    from engine import ImageTooSmallError
    try:
        pred = predictor.predict_with_probs(image)
    except ImageTooSmallError as exc:
        if name is None or exc.path is not None:
            raise
        raise ImageTooSmallError(exc.reason, name) from None
    return pred.labels, pred.probs


def predict_batch(predictor, store, ids: list[str], model_id: str, current: list, *,
                  progress, cancel, emit: Callable[[Any], None]) -> dict:
    """Pre-label ``ids``: predict, then save through the store (which refuses to overwrite a person's
    mask). The image shown in the app (``current[0]``, read live) is handed to the UI thread instead as
    ``emit((image_id, labels, probs))``, so the session applies it to the open document as one undo
    step. Each image costs what ``Predictor.predict_with_probs`` holds (labels plus capped-grid
    probabilities), plus the next image being read ahead."""
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
                emit((image_id, labels, probs))
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
    from engine.weights import catalog
    return {e.id: catalog.is_downloaded(e) for e in catalog.list_weights("segmentation")}


def folder_default(store, last: str | None, downloaded: dict[str, bool]) -> tuple[str, str] | None:
    """What to load on opening a folder: ``(path, "folder")`` for its current fine-tuned version (trained
    on these very labels), else ``(spec, "last")`` for the weights used last time when they are on this
    machine (never a download), else None. Reads the folder's versions.json: worker thread."""
    if store is not None:
        from engine import Versions
        try:
            path = Versions.of(store).current_path()
        except (OSError, ValueError) as exc:  # an unreadable index: say so, fall back to the last weights
            log.warning("cannot read the folder's model versions: %s", exc)
            path = None
        if path is not None and Path(path).is_file():
            engine.checkpoint_id(path)  # hashed here, so the UI thread's comparison is answered from memory
            return str(path), "folder"
    if last and (downloaded.get(last) or (not is_catalog_id(last) and Path(last).is_file())):
        return last, "last"
    return None


# ---------------------------------------------------------------------- the folder's fine-tuned versions
@dataclass(frozen=True)
class VersionEntry:
    name: str
    text: str
    current: bool


def version_text(v: Any, current: bool) -> str:
    """"finetune-v002 · mIoU 0.412 → 0.571 · 300 steps · 21 Nov 11:05 (current)"."""
    def f(x):
        return "–" if x is None else f"{x:.3f}"
    stem = v.name.rsplit(".", 1)[0]
    when = time.strftime("%d %b %H:%M", time.localtime(v.created))
    return f"{stem} · mIoU {f(v.miou_before)} → {f(v.miou_after)} · {v.steps} steps · {when}" + \
        (" (current)" if current else "")


def list_versions(store) -> tuple[list[VersionEntry], str | None]:
    """The versions, newest first, and the index's notice (a damaged ``versions.json`` was rebuilt)."""
    from engine import Versions
    versions = Versions.of(store)
    cur = versions.current
    entries = [VersionEntry(v.name, version_text(v, cur is not None and v.name == cur.name),
                            cur is not None and v.name == cur.name) for v in reversed(versions.list())]
    return entries, versions.notice


def use_version(store, name: str) -> tuple[Any, str]:
    """Load version ``name`` and make it current; returns (model, model_id)."""
    from engine import Versions
    versions = Versions.of(store)
    path = versions.path(name)
    model = engine.load_model(path)
    versions.set_current(name)
    return model, engine.checkpoint_id(path)
