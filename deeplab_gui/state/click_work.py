"""The click-model work that runs off the UI thread: loading a click model, and an image's embedding.

Plain functions without Qt: :class:`~.click_models.ClickModelState` runs them through the session's task
runner.  An embedding comes from the store's cache when it holds a fresh one for this model (no
encoder), else from the encoder, and is then written to the cache so the next visit is free.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ClickModelError", "Embedded", "LoadedClick", "click_catalog", "click_model_id", "embed_image",
           "is_click_catalog_id", "load_click", "missing_text", "on_this_machine"]

log = logging.getLogger("deeplab_gui")

# The catalog entry suggested to a person without any click model: small, and quick on a CPU.
SUGGESTED = "mobile_sam"


class ClickModelError(Exception):
    """A click model cannot be used; the message is one sentence for a person."""


def click_catalog() -> list:
    """The catalog's click-model entries, in the catalog's order."""
    from engine.weights import catalog
    return catalog.list_weights("click")


def is_click_catalog_id(spec: str | None) -> bool:
    return bool(spec) and any(e.id == spec for e in click_catalog())


def on_this_machine(entry_id: str) -> bool:
    """Whether the entry's file is in the weights cache (a stat, no hashing: the load checks the hash)."""
    from engine.weights import catalog
    return catalog.weights_path(entry_id).is_file()


def missing_text(entry_id: str = SUGGESTED) -> str:
    """One line telling how to get a click model: the catalog entry, and where to save it by hand."""
    from engine.weights import catalog
    e = catalog.get_weights(entry_id)
    return (f"No click model: choose {e.id} ({e.approx_mb} MB) under Click model to download it, "
            f"or save {e.url} as {catalog.weights_path(e)}")


def click_model_id(spec: str) -> str:
    """The identity cached embeddings are tagged with: a catalog id as is; a file's resolved path,
    size and modification time (a file replaced in place is another model)."""
    if is_click_catalog_id(spec):
        return spec
    path = Path(spec).expanduser().resolve()
    st = path.stat()
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


@dataclass
class LoadedClick:
    model: Any       # engine.click.ClickModel, eval mode, on its device
    model_id: str
    spec: str        # what settings remember: a catalog id or a resolved file path
    name: str        # what to call it: the catalog id or the file's name


def _device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_click(spec: str, *, allow_download: bool = True, progress=None, cancel=None) -> LoadedClick | None:
    """Load a click model: a catalog id (downloaded first if needed and allowed) or a weights file.

    Without ``allow_download``, a catalog entry not on this machine gives None (nothing to load).
    """
    from engine.click import load_click_model
    from engine.weights import catalog

    def kb_progress(done: int, total: int | None) -> None:
        if progress is not None:   # Qt progress is int32: kilobytes, so a 2.5 GB file fits
            progress(done >> 10, (total or 0) >> 10)
    if is_click_catalog_id(spec):
        entry = catalog.get_weights(spec)
        if not allow_download:
            if not on_this_machine(spec):
                return None
            path = catalog.resolve_weights(entry, allow_download=False)   # never a download
        else:
            path = catalog.download(entry, progress=kb_progress, cancel=cancel)
        return LoadedClick(load_click_model(path, arch=entry.arch, device=_device()), spec, spec, spec)
    path = Path(spec).expanduser()
    if not path.is_file():
        if not allow_download:
            return None
        raise ClickModelError(f"{path}: no such file")
    path = path.resolve()
    model_id = click_model_id(str(path))
    return LoadedClick(load_click_model(path, device=_device()), model_id, str(path), path.name)


@dataclass
class Embedded:
    image_id: str
    predictor: Any | None   # engine.ClickPredictor holding the image's embedding; None: not computed
    computed: bool          # the encoder ran (False: the embedding came from the store's cache)


def _read_pixels(store: Any, image_id: str) -> np.ndarray:
    from engine import read_image
    return read_image(store.image_path(image_id))


def embed_image(store: Any, image_id: str, model: Any, model_id: str, image: np.ndarray | None,
                may_encode: bool = True, *, counted=None, cancel=None, between=None) -> Embedded:
    """A predictor holding ``image_id``'s embedding: from the store's cache, else (``may_encode``) from
    the encoder on ``image`` (read from disk when None), then saved to the cache.  ``counted()`` is
    called before each encoder run, ``between()`` after each of its blocks (see
    ``ClickPredictor.set_image``).  Worker thread only."""
    from engine import ClickPredictor, ImageSignature, StoreError
    from engine.store.embcache import as_stored
    predictor = ClickPredictor(model)
    cached = store.load_embedding(image_id, model_id)
    if cached is not None and cached.model == model.name:
        predictor.set_embedding(cached)
        return Embedded(image_id, predictor, False)
    if not may_encode or (cancel is not None and cancel()):
        return Embedded(image_id, None, False)
    # The signature before the pixels: should the file change meanwhile, the entry reads as stale.
    signature = ImageSignature.of(store.image_path(image_id))
    pixels = image if image is not None else _read_pixels(store, image_id)
    if cancel is not None and cancel():
        return Embedded(image_id, None, False)
    if counted is not None:
        counted()
    predictor.set_image(pixels, between=between)
    # At the cache's precision from the start: this visit's clicks then give what every later visit's
    # (from the cache) give, to the pixel.
    embedding = as_stored(predictor.get_embedding())
    predictor.set_embedding(embedding)
    if not store.read_only:
        try:
            store.save_embedding(image_id, embedding, model_id=model_id, signature=signature)
        except (StoreError, OSError) as exc:   # the cache is only a saving of time: the work goes on
            log.warning("click embedding of %s not cached: %s", image_id, exc)
    return Embedded(image_id, predictor, True)
