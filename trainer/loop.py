"""The fine-tuning loop: "Fine-tune on my labels" as a generator of progress events.

    run = FineTune(store, model, Recipe(iterations=300))
    for event in run:              # on a worker thread; run.cancel() from any thread
        show(event.step, event.loss, event.lr, event.miou, event.eta_s)
    result = run.result            # .model (swap it in), .version, .promoted, .miou_before/after

The caller's model is never modified: training works on a copy.  Nothing is written until the end,
when one checkpoint is written atomically and recorded in the store's versions; a cancelled run
leaves the current model, the versions and the store exactly as they were.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine import VOID, Version, Versions, cancel_check, nonfinite_tensors, resolve_device, save_model

from . import ddp
from .augment import to_input
from .classes import ClassChange, adapt_classes
from .dataset import SegDataset, labelled_samples, make_loader, split_heldout
from .guards import check_out_path, has_labelled_pixels
from .metrics import evaluate, miou
from .params import bn_statistics_trained, freeze_bn_params, set_train_mode, split_params
from .recipe import Recipe
from .schedule import poly_lr, progress_fraction

__all__ = ["FineTune", "FineTuneResult", "Progress", "TrainError", "msc_loss", "seg_loss"]


class TrainError(RuntimeError):
    """A run that cannot start (no labelled images, unreadable data); the message says why."""


@dataclass(frozen=True)
class Progress:
    """One event.  ``phase``: prepare, validate, train, save, done or cancelled.

    ``step``/``total``: optimiser steps; ``loss`` (mean over ranks), ``lr`` (backbone), ``miou``
    (latest held-out value, None until measured or without held-out images), ``eta_s`` seconds left.
    """

    phase: str
    step: int = 0
    total: int = 0
    loss: float | None = None
    lr: float | None = None
    miou: float | None = None
    eta_s: float | None = None
    elapsed_s: float = 0.0
    images_per_s: float | None = None
    message: str = ""


@dataclass
class FineTuneResult:
    status: str                      # "done" or "cancelled"
    model: nn.Module | None = None   # the trained model, eval mode (None when cancelled)
    checkpoint: Path | None = None   # written by rank 0 only
    version: Version | None = None
    promoted: bool = False           # became the store's current version
    miou_before: float | None = None
    miou_after: float | None = None
    steps: int = 0
    stop_reason: str = ""            # iterations, time budget, early stop, cancelled
    train_ids: list[str] = field(default_factory=list)
    heldout_ids: list[str] = field(default_factory=list)
    class_change: ClassChange | None = None
    history: list[tuple[int, float, float]] = field(default_factory=list)  # (step, loss, lr)


def msc_loss(outputs: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """DeepLab v2's multi-scale training loss (kazuto1011's recipe): the sum of one cross-entropy per
    output of ``forward_scales`` (full scale, each input scale, and their max), each against the labels
    resized to that output's stride-8 size by nearest neighbour (pixel centres, as PIL resizes them)."""
    total = None
    for logits in outputs:
        small = F.interpolate(target[:, None].float(), size=logits.shape[-2:], mode="nearest-exact")
        loss = seg_loss(logits, small[:, 0].long())
        total = loss if total is None else total + loss
    return total


def seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over labelled pixels (255 ignored); 0 (with a graph) for an all-void batch,
    where the mean over no pixels would be NaN and poison the weights."""
    if not bool((target != VOID).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target, ignore_index=VOID)


class FineTune:
    """One fine-tuning run of ``model`` on ``store``'s edited and reviewed masks.

    ``model``: the starting model (never modified: the run trains a copy), or a function that builds
    one, called on the thread that iterates the run (a folder's first model, built from scratch or
    an ImageNet backbone without holding up the caller).
    ``store``: an open engine AnnotationStore (read-only is fine on DDP ranks other than 0).
    ``parent``: what the model was loaded from (a version name or a path), recorded in the version.
    ``confirm``: make the new version current even if held-out mIoU dropped (or was not measured).
    ``out``: write the checkpoint there instead of into the store's versions (scripts).
    ``cancel``: optional callable or threading.Event polled every step, besides :meth:`cancel`.
    """

    def __init__(self, store, model: nn.Module | Callable[[], nn.Module], recipe: Recipe | None = None, *,
                 parent: str | None = None,
                 confirm: bool = False, out: str | Path | None = None,
                 cancel: Callable[[], bool] | threading.Event | None = None) -> None:
        self.store, self.model, self.recipe = store, model, recipe or Recipe()
        self.parent = parent if parent is not None else (_parent_of(model) if isinstance(model, nn.Module) else None)
        self.confirm, self.out = confirm, Path(out) if out is not None else None
        self._cancel = threading.Event()
        self._external = cancel_check(cancel)
        self.result: FineTuneResult | None = None

    def cancel(self) -> None:
        """Ask the run to stop at the next step; thread-safe.  Nothing gets written."""
        self._cancel.set()

    def cancelled(self) -> bool:
        return self._cancel.is_set() or self._external()

    def run(self, progress: Callable[[Progress], None] | None = None) -> FineTuneResult:
        """Run to the end, passing each event to ``progress``; returns the result."""
        for ev in self:
            if progress is not None:
                progress(ev)
        assert self.result is not None
        return self.result

    # ------------------------------------------------------------------ the loop
    def __iter__(self) -> Iterator[Progress]:
        r, info, t0 = self.recipe, ddp.dist_info(), time.monotonic()
        device = _device(r.device, info)
        if self.out is not None and info.is_main:  # before the run, not after it
            check_out_path(self.out)
        yield Progress("prepare", message="reading the labelled images")
        samples = labelled_samples(self.store)
        if not samples:
            raise TrainError("no images with edited or reviewed masks to learn from")
        train, held = split_heldout(samples, r.heldout_fraction, r.seed)
        if not has_labelled_pixels(s.mask_path for s in train):
            raise TrainError(f"{self.store.folder}: no labelled pixels to learn from: the masks of the "
                             f"{len(train)} image(s) to train on are void (255) everywhere")
        names = self.store.class_names
        if not isinstance(self.model, nn.Module):  # a builder: the first model of this folder
            yield Progress("prepare", message="building a new model")
            self.model = self.model()
            if self.parent is None:
                self.parent = _parent_of(self.model)
        work, change = adapt_classes(self.model, names, self.store.class_colors)  # a copy
        if nonfinite_tensors(work.state_dict()):
            raise TrainError(f"the model to start from ({self.parent or 'unnamed'}) has NaN or infinite "
                             "weights; start from another version or other weights")
        work.to(device)
        frozen = r.bn_frozen()
        if frozen and r.freeze_bn is None and not bn_statistics_trained(work):
            frozen = False  # nothing learned to keep: frozen identity normalisation would diverge
            yield Progress("prepare", message="BatchNorm statistics are untrained: training them")
        if frozen:
            freeze_bn_params(work)
        net = ddp.wrap_ddp(work, device)
        msc = bool(getattr(work, "msc_scales", None))  # DeepLab v2 MSC: a loss per scale (msc_loss)
        amp = r.amp and device.type == "cuda"
        num_classes = len(names)
        result = FineTuneResult("cancelled", train_ids=[s.id for s in train], heldout_ids=[s.id for s in held],
                                class_change=change)

        def validate() -> float | None:
            """Held-out mIoU (all ranks together); None without held-out images or when cancelled."""
            if not held:
                return None
            work.eval()
            conf = evaluate(work, held[info.rank::info.world], num_classes=num_classes, device=device,
                            max_side=r.eval_max_side, amp=amp, cancel=self.cancelled)
            stop = ddp.any_rank(conf is None)
            if stop:
                return math.nan
            value = miou(ddp.all_reduce_sum(conf))
            return None if math.isnan(value) else value

        yield Progress("validate", total=r.iterations, elapsed_s=time.monotonic() - t0,
                       message="measuring the model before training")
        before = validate()
        if before is not None and math.isnan(before):
            yield self._finish_cancelled(result, t0)
            return
        result.miou_before = last_miou = before

        backbone, head = split_params(work)
        groups = [{"params": backbone, "lr": r.lr, "base_lr": r.lr},
                  {"params": head, "lr": r.lr * r.head_lr_mult, "base_lr": r.lr * r.head_lr_mult}]
        opt = torch.optim.SGD([g for g in groups if g["params"]], lr=r.lr, momentum=r.momentum,
                              weight_decay=r.weight_decay)
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        dataset = SegDataset(train, crop=r.crop, scale_min=r.scale_min, scale_max=r.scale_max, flip=r.flip,
                             seed=r.seed)
        batches = make_loader(dataset, r.batch_size, seed=r.seed, rank=info.rank, world=info.world,
                              num_workers=r.num_workers)
        pp = work.meta.preprocessing
        best, best_state, bad_evals, stop_reason = before, None, 0, "iterations"
        t_train, step_times, step, bad_steps = time.monotonic(), [], 0, 0
        for step in range(1, r.iterations + 1):
            if ddp.any_rank(self.cancelled()):
                yield self._finish_cancelled(result, t0, step - 1)
                return
            t_step = time.monotonic()
            frac = progress_fraction(step - 1, r.iterations, t_step - t_train, r.time_budget_s)
            for g in opt.param_groups:
                g["lr"] = poly_lr(g["base_lr"], frac, r.poly_power)
            set_train_mode(work, frozen_bn=frozen, batch_size=r.batch_size)
            total_loss = 0.0
            for _ in range(r.accumulate):
                images, masks = next(batches)
                x, y = to_input(images.to(device), pp), masks.to(device)
                with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                    if msc:
                        loss = msc_loss(net(x, return_scales=True), y)
                    else:
                        out, aux = net(x, return_aux=True)
                        loss = seg_loss(out, y)
                        if aux is not None and r.aux_weight:
                            loss = loss + r.aux_weight * seg_loss(aux, y)
                scaler.scale(loss / r.accumulate).backward()
                total_loss += float(loss.detach()) / r.accumulate
            if ddp.any_rank(not math.isfinite(total_loss)) and not amp:
                # fp32 NaN/inf: the weights would be ruined by this step (AMP's scaler skips it itself).
                opt.zero_grad(set_to_none=True)
                bad_steps += 1
                if bad_steps >= 3:
                    raise TrainError("training diverged (loss is not finite); lower the learning rate")
                continue
            bad_steps = 0
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            step_times.append(time.monotonic() - t_step)
            loss_all = ddp.all_reduce_mean(total_loss)
            lr_now = opt.param_groups[0]["lr"]
            result.history.append((step, loss_all, lr_now))
            elapsed_train = time.monotonic() - t_train
            out_of_time = r.time_budget_s is not None and elapsed_train >= r.time_budget_s
            out_of_time = ddp.any_rank(out_of_time)  # ranks run at slightly different speeds
            yield Progress("train", step, r.iterations, loss_all, lr_now, last_miou,
                           self._eta(step, step_times, elapsed_train, len(held)), time.monotonic() - t0,
                           r.batch_size * r.accumulate * info.world / max(step_times[-1], 1e-9))
            if out_of_time:
                stop_reason = "time budget"
                break
            if held and r.eval_every and step % r.eval_every == 0 and step < r.iterations:
                value = validate()
                if value is not None and math.isnan(value):
                    yield self._finish_cancelled(result, t0, step)
                    return
                last_miou = value
                yield Progress("validate", step, r.iterations, loss_all, lr_now, value,
                               elapsed_s=time.monotonic() - t0, message=f"held-out mIoU {value:.3f}")
                if value is not None and (best is None or value > best):
                    best, bad_evals = value, 0
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in work.state_dict().items()}
                else:
                    bad_evals += 1
                    if r.patience and bad_evals >= r.patience:
                        stop_reason = "early stop"
                        break

        yield Progress("validate", step, r.iterations, elapsed_s=time.monotonic() - t0,
                       message="measuring the model after training")
        after = validate()
        if after is not None and math.isnan(after):
            yield self._finish_cancelled(result, t0, step)
            return
        if best_state is not None and after is not None and best is not None and best > after:
            work.load_state_dict(best_state)  # early stopping keeps the best weights seen
            after = best
        if ddp.any_rank(self.cancelled()):  # last chance: after this the checkpoint is written
            yield self._finish_cancelled(result, t0, step)
            return
        bad = nonfinite_tensors(work.state_dict())
        if bad:  # never written, never made current: it would be every later run's starting point
            raise TrainError(f"training diverged: {len(bad)} weight tensor(s) hold NaN or infinity "
                             f"(first {bad[0]}); nothing was written; lower the learning rate")
        work.eval()
        result.status, result.model, result.steps, result.stop_reason = "done", work, step, stop_reason
        result.miou_after = after
        yield Progress("save", step, r.iterations, miou=after, elapsed_s=time.monotonic() - t0,
                       message="writing the new version")
        if info.is_main:
            self._save(result, work)
        ddp.barrier()
        yield Progress("done", step, r.iterations, miou=after, eta_s=0.0, elapsed_s=time.monotonic() - t0,
                       message=_summary(result))
        self.result = result

    # ------------------------------------------------------------------ helpers
    def _finish_cancelled(self, result: FineTuneResult, t0: float, step: int = 0) -> Progress:
        result.status, result.stop_reason, result.steps = "cancelled", "cancelled", step
        self.result = result
        return Progress("cancelled", step, self.recipe.iterations, elapsed_s=time.monotonic() - t0,
                        message="cancelled; nothing was changed")

    def _eta(self, step: int, step_times: list[float], elapsed: float, n_held: int) -> float:
        r = self.recipe
        recent = step_times[-20:]
        per_step = sum(recent) / len(recent)
        left = (r.iterations - step) * per_step
        if r.time_budget_s is not None:
            left = min(left, max(r.time_budget_s - elapsed, 0.0))
        # Validation costs roughly one forward pass per held-out image, about a third of a step each.
        evals = (((r.iterations - step) // r.eval_every) if r.eval_every else 0) + 1
        return left + evals * n_held * per_step / (3 * r.batch_size)

    def _save(self, result: FineTuneResult, model: nn.Module) -> None:
        r = self.recipe
        path = self.out or self.store.new_checkpoint_path(_stem(model.meta.arch))
        version = Version(name=path.name, parent=self.parent, images=result.train_ids,
                          heldout=result.heldout_ids, recipe=r.to_dict(), miou_before=result.miou_before,
                          miou_after=result.miou_after, steps=result.steps, arch=model.meta.arch,
                          note=result.stop_reason)
        measured = version.improved
        promote = self.confirm or bool(measured)
        version.note += ("; made current" if promote else
                         "; not made current: " + ("held-out mIoU dropped" if measured is False
                                                   else "no held-out images to measure it"))
        meta = dict(version=version.to_dict(), parent=self.parent,
                    training={"images": len(result.train_ids), "heldout": len(result.heldout_ids),
                              "miou_before": result.miou_before, "miou_after": result.miou_after,
                              "steps": result.steps, "stop_reason": result.stop_reason,
                              "losses": [round(l, 5) for _, l, _ in result.history]})
        save_model(model, path, **meta)  # atomic: temp file, fsync, rename
        model.meta.extra.update(meta)
        result.checkpoint, result.version = path, version
        if self.out is None:
            Versions.of(self.store).add(version, make_current=promote)
            result.promoted = promote


def _device(requested: str, info: ddp.DistInfo) -> torch.device:
    dev = resolve_device(requested)
    if dev.type == "cuda" and info.distributed:
        return torch.device("cuda", info.local_rank)
    return dev


def _parent_of(model: nn.Module) -> str | None:
    extra = getattr(getattr(model, "meta", None), "extra", {}) or {}
    return extra.get("source_file") or extra.get("weights_id") or (extra.get("version") or {}).get("name")


def _stem(arch: str) -> str:
    return f"{arch}-finetune"


def _summary(r: FineTuneResult) -> str:
    def f(v):
        return "n/a" if v is None else f"{v:.3f}"
    state = "now current" if r.promoted else "kept aside"
    return f"{r.steps} steps ({r.stop_reason}); held-out mIoU {f(r.miou_before)} -> {f(r.miou_after)}; {state}"
