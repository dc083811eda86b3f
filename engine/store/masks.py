"""The mask half of :class:`~engine.store.AnnotationStore`: reading, validating and writing masks.

A mixin so that the store keeps one API (``store.save_mask``, ``store.save_prediction``, ...) while each
module stays readable. It relies on the store's ``root``, ``_classes``, ``_sizes`` (image size cache),
``_mutex``, ``_writable()``, ``status()``/``_put_status()``, ``image_path()``, ``class_colors`` and
``save_probs()``. The rules it keeps are the store's: atomic writes, and a person's mask (edited or
reviewed) is never replaced by a prediction unless the caller says ``overwrite=True``.
"""
from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np

from ..imageio import ImageReadError, image_size
from ..labels import VOID, load_mask_png, save_mask_png
from .format import PROTECTED, MaskError, Status, StoreError, sidecar_path
from .format import check_id as _check_id
from .format import write_error as _write_error
from .provenance import mask_png_size, read_confirmed_png, write_confirmed_png

__all__ = ["MaskMethods"]


class MaskMethods:
    """Mask and prediction methods of the annotation store (see the module docstring)."""

    def mask_path(self, image_id: str) -> Path:
        return sidecar_path(self.root / "masks", image_id, ".png")

    def has_mask(self, image_id: str) -> bool:
        return self.mask_path(image_id).exists()

    def load_mask(self, image_id: str) -> np.ndarray | None:
        """The stored H×W uint8 mask (255 void), or None when there is none.

        Raises :class:`StoreError` naming the file when it exists but cannot be read.
        """
        path = self.mask_path(image_id)
        try:
            return load_mask_png(path)
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise StoreError(f"the mask of {image_id} is unreadable: {exc}") from None

    def validate_mask(self, image_id: str, mask: np.ndarray) -> np.ndarray:
        """Check shape (that of the image, EXIF-rotated) and class indices; returns it as uint8."""
        m = np.asarray(mask)
        if m.ndim != 2 or 0 in m.shape:
            raise MaskError(f"mask for {image_id} must be a non-empty HxW array, got shape {m.shape}")
        if m.dtype != np.uint8:
            if not np.issubdtype(m.dtype, np.integer):
                raise MaskError(f"mask for {image_id} must hold integer class indices, got {m.dtype}")
            if m.min() < 0 or m.max() > 255:
                raise MaskError(f"mask for {image_id} has values outside 0..255")
            m = m.astype(np.uint8)
        size = self._image_hw(image_id)
        if size is not None and tuple(m.shape) != size:
            raise MaskError(f"mask for {image_id} is {m.shape[1]}x{m.shape[0]} but the image is "
                            f"{size[1]}x{size[0]}; nothing was saved")
        n = len(self._classes)
        # Two counting passes (a few ms at 12 Mpx) instead of building a boolean mask of offenders.
        if n < VOID and np.count_nonzero(m >= n) > np.count_nonzero(m == VOID):
            bad = np.unique(m[(m >= n) & (m != VOID)])
            if bad.size:
                raise MaskError(f"mask for {image_id} uses class index {int(bad[0])} but the class list "
                                f"has {n} classes (0..{n - 1}, 255 void); nothing was saved")
        return m

    def _image_hw(self, image_id: str) -> tuple[int, int] | None:
        path = self.image_path(image_id)
        try:
            st = os.stat(path)
        except OSError:
            return None  # image gone: keep the user's mask rather than refuse it
        cached = self._sizes.get(image_id)
        if cached and cached[:2] == (st.st_size, st.st_mtime_ns):
            return cached[2:]
        try:
            w, h = image_size(path)
        except ImageReadError:
            return None
        self._sizes[image_id] = (st.st_size, st.st_mtime_ns, h, w)
        return (h, w)

    def confirmed_path(self, image_id: str) -> Path:
        return sidecar_path(self.root / "confirmed", image_id, ".png")

    def load_confirmed(self, image_id: str) -> np.ndarray | None:
        """H×W bool: the pixels of the stored mask a person set (see :mod:`engine.store.provenance`);
        None when there is no mask."""
        size = mask_png_size(self.mask_path(image_id))
        if size is None:
            return None
        status = self.status(image_id)
        if status is Status.REVIEWED:
            return np.ones(size, bool)
        if status is Status.PRELABELED:
            return np.zeros(size, bool)
        # edited, or a mask on disk the database has no status for (treated as a person's)
        stored = read_confirmed_png(self.confirmed_path(image_id), size)
        return np.ones(size, bool) if stored is None else stored

    def _write_confirmed(self, image_id: str, confirmed: np.ndarray) -> None:
        try:
            write_confirmed_png(self.confirmed_path(image_id), confirmed)
        except OSError as exc:
            raise _write_error(exc, f"the confirmed pixels of {image_id}") from exc

    def _drop_confirmed(self, image_id: str) -> None:
        try:
            self.confirmed_path(image_id).unlink()
        except OSError:
            pass  # a stale file is ignored anyway while the status is not edited

    def save_mask(self, image_id: str, mask: np.ndarray, *, status: Status | str | None = None,
                  confirmed: np.ndarray | None = None) -> None:
        """Save a person's mask (cheap enough to call on every autosave tick).

        ``status``: None means ``edited`` (``reviewed`` stays ``reviewed``), except with a ``confirmed``
        map that holds no pixel: no person's pixel, so the image stays (or, when every edit was
        undone, becomes again) ``prelabeled``, or ``unlabeled`` for an all-void mask.  ``confirmed``: H×W bool,
        the pixels a person set; None keeps what the store had (for a mask that was not the person's
        yet, that means every pixel, as before the map existed).  Raises :class:`MaskError` for a
        mask that does not fit, :class:`StoreWriteError` when the disk refuses; in both cases the
        previous mask on disk is untouched.

        Order of the writes: at every moment the confirmed file on disk claims no pixel that the mask
        on disk does not hold from a person.  So before the status and the mask change, the file
        becomes the intersection of the old and new maps (written only when that differs from what
        is on disk), and only after the mask is in place does it become the new map.  A kill in
        between leaves too few pixels confirmed, never a model pixel passed off as a person's.
        """
        m = self.validate_mask(image_id, mask)
        conf = None
        if confirmed is not None:
            conf = np.asarray(confirmed)
            if conf.shape != m.shape or conf.dtype != np.bool_:
                raise MaskError(f"the confirmed map of {image_id} must be an H×W bool array of shape "
                                f"{m.shape}; nothing was saved")
        with self._mutex:
            self._writable()
            old = self.status(image_id)
            new = Status(status) if status is not None else (
                Status.REVIEWED if old is Status.REVIEWED else Status.EDITED)
            if status is None and conf is not None and not conf.any() and old is not Status.REVIEWED:
                # No pixel a person set (every edit undone, or only the model's labels applied): the
                # model's image again, which a later pre-label may update and training leaves out.
                new = Status.PRELABELED if old is Status.PRELABELED or bool((m != VOID).any()) else Status.UNLABELED
            path = self.mask_path(image_id)
            cpath = self.confirmed_path(image_id)
            after = None
            if conf is not None:
                size = mask_png_size(path)
                if old in PROTECTED or (old is Status.UNLABELED and size is not None):
                    before = read_confirmed_png(cpath, size)
                    if before is None:
                        before = np.ones(m.shape, bool) if size == m.shape else np.zeros(m.shape, bool)
                    elif before.shape != m.shape:
                        before = np.zeros(m.shape, bool)
                    on_disk = cpath.exists()
                else:
                    before, on_disk = np.zeros(m.shape, bool), False
                both = before & conf
                if not on_disk or not np.array_equal(both, before):
                    self._write_confirmed(image_id, both)
                after = None if np.array_equal(both, conf) else conf
            elif old not in PROTECTED:
                # No provenance given for a mask becoming a person's: a stale map (from before a
                # prediction replaced the mask) must not be read as this mask's.
                self._drop_confirmed(image_id)
            self._put_mask(image_id, path, m, old, new)
            if after is not None:
                self._write_confirmed(image_id, after)

    def _put_mask(self, image_id: str, path: Path, m: np.ndarray, old: Status, new: Status) -> None:
        # Status first: a kill between the two steps leaves "edited" on an older mask, which is
        # harmless; the other order could leave a person's mask marked as a prediction.
        if new is not old:  # autosaves of an edited mask cost no database commit
            self._put_status(image_id, new)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_mask_png(path, m, self.class_colors, compress_level=1)
        except OSError as exc:
            if new is not old:
                try:
                    self._put_status(image_id, old)
                except StoreError:
                    pass
            raise _write_error(exc, f"the mask of {image_id}") from exc

    def needs_prelabel(self, image_id: str, *, overwrite: bool = False) -> bool:
        """Whether a pre-label run should predict this image (False for a person's mask).

        A mask file the database has no status for is treated as a person's: a prediction never
        replaces a mask on disk because the database forgot about it.
        """
        if overwrite:
            return True
        status = self.status(image_id)
        if status is Status.UNLABELED:
            return not self.mask_path(image_id).exists()
        return status not in PROTECTED

    def save_prediction(self, image_id: str, mask: np.ndarray, *, probs: np.ndarray | None = None,
                        model_id: str = "", overwrite: bool = False, probs_file: bytes | None = None,
                        variant: str = "", image_stat: dict | None = None) -> bool:
        """Store a model's mask (and optionally its probabilities, or their cache file already made by
        ``engine.store.probcache.encode_probs``: ``probs_file``) as ``prelabeled``. ``variant``: how
        the mask was made beyond the model (``"crf"``), kept in the pre-label's note, with
        ``image_stat`` (``{"bytes", "mtime_ns"}`` of the image file when it was read for this
        prediction; default: as it is now), so an image changed meanwhile is not taken as done.

        Returns False, writing nothing, when the image holds an edited or reviewed mask and
        ``overwrite`` is False.  This is what ``deeplab-gui prelabel FOLDER`` (no ``--out``) calls.
        """
        m = self.validate_mask(image_id, mask)
        with self._mutex:
            self._writable()
            if not self.needs_prelabel(image_id, overwrite=overwrite):
                return False
            old = self.status(image_id)
            path = self.mask_path(image_id)
            # Status first, as for a person's save: a kill between the two steps leaves "prelabeled" on
            # the old (or no) mask, which the next run redoes; a mask without a status would read as a
            # person's and be protected from every later prediction.
            if old is not Status.PRELABELED:
                self._put_status(image_id, Status.PRELABELED)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                save_mask_png(path, m, self.class_colors, compress_level=1)
            except OSError as exc:
                if old is not Status.PRELABELED:
                    try:
                        self._put_status(image_id, old)
                    except StoreError:
                        pass
                raise _write_error(exc, f"the prediction for {image_id}") from exc
            if old is not Status.PRELABELED:
                self._drop_confirmed(image_id)  # the person's map described the mask just replaced
            self._record_prelabel(image_id, model_id, path, variant, image_stat)
        if probs_file is not None:
            self.save_probs_file(image_id, probs_file, model_id=model_id)
        elif probs is not None:
            self.save_probs(image_id, probs, model_id=model_id)
        return True

    def _record_prelabel(self, image_id: str, model_id: str, mask_path: Path, variant: str = "",
                         image_stat: dict | None = None) -> None:
        """Note what the pre-label just written was made from (see ``format.PRELABELS_TABLE``); a
        file that cannot be read back leaves no note (the image then counts as not done)."""
        try:
            image = dict(image_stat) if image_stat else _stat(self.image_path(image_id))
            tag = {"model_id": model_id, "variant": variant, "image": image, "mask": _stat(mask_path)}
        except OSError:
            return
        self._exec("INSERT INTO prelabels VALUES(?, ?) ON CONFLICT(id) DO UPDATE SET tag=excluded.tag",
                   (image_id, json.dumps(tag)), what=f"the pre-label note of {image_id}")

    def prelabel_tags(self) -> dict[str, dict]:
        """Every pre-label note by image id (an old store, or a lost database, has none)."""
        if getattr(self, "_db", None) is None:
            return {}
        with self._mutex:
            try:
                rows = self._db.execute("SELECT id, tag FROM prelabels").fetchall()
            except sqlite3.Error:
                return {}
        out = {}
        for image_id, text in rows:
            try:
                out[image_id] = json.loads(text)
            except ValueError:
                continue
        return out

    def prelabel_current(self, image_id: str, model_id: str, tag: dict | None, variant: str = "") -> bool | None:
        """Whether the pre-label note ``tag`` says ``image_id``'s mask is ``model_id``'s prediction
        (made the ``variant`` way) for the image as it is now; None without a note."""
        if not tag:
            return None
        try:
            return (tag.get("model_id") == model_id and tag.get("variant", "") == variant
                    and tag.get("image") == _stat(self.image_path(image_id))
                    and tag.get("mask") == _stat(self.mask_path(image_id)))
        except OSError:
            return False

    def delete_mask(self, image_id: str) -> None:
        """Remove the mask and reset the status to unlabeled.

        The file goes first: a kill between the two steps leaves a status without a mask (harmless),
        never an unlabeled image whose mask a prediction could then replace.
        """
        with self._mutex:
            self._writable()
            try:
                self.mask_path(image_id).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise _write_error(exc, f"the mask of {image_id}") from exc
            self._put_status(_check_id(image_id), Status.UNLABELED)
            self._drop_confirmed(image_id)


def _stat(path: Path) -> dict:
    st = os.stat(path)
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
