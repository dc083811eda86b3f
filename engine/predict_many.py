"""``Predictor.predict_many``: a folder of images, each read on a helper thread while the previous one runs.

Apart from the Predictor so that it stays the single-image story (read, normalise, run, upsample);
the loop here only orders the work and keeps one bad file from ending a run of thousands.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from .cancel import cancel_check

__all__ = ["predict_many"]


def predict_many(predictor: Any, images: Iterable[Any], *, progress: Callable[[int, int | None], Any] | None = None,
                 cancel: Callable[[], bool] | Any = None, labels: bool = False, prediction: bool = False,
                 ) -> Iterator[tuple[Any, Any]]:
    """See :meth:`engine.predictor.Predictor.predict_many`."""
    total = len(images) if hasattr(images, "__len__") else None  # type: ignore[arg-type]
    is_cancelled = cancel_check(cancel)
    run = (predictor.predict_with_probs if prediction else predictor.predict_labels if labels
           else predictor.predict)

    def load(item: Any) -> np.ndarray | Exception:
        try:
            return predictor._as_rgb(item)
        except Exception as exc:  # reported per item, in order, by the consumer below
            return exc

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="predictor-read") as pool:
        it = iter(enumerate(images))
        pending = None
        first = next(it, None)
        if first is not None:
            pending = (first, pool.submit(load, first[1]))
        done = 0
        while pending is not None:
            (index, item), future = pending
            if is_cancelled():
                future.cancel()
                return
            nxt = next(it, None)
            pending = (nxt, pool.submit(load, nxt[1])) if nxt is not None else None
            key = item if isinstance(item, (str, os.PathLike)) else index
            loaded = future.result()
            if isinstance(loaded, Exception):
                result: np.ndarray | Exception = loaded
            else:
                try:
                    result = run(loaded)
                except Exception as exc:  # one bad item must not end a folder run
                    result = exc
            done += 1
            if progress is not None:
                progress(done, total)
            yield key, result
            del loaded, result  # not held while the next item is predicted
