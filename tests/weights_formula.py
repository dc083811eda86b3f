"""Deterministic model weights from a formula of each state-dict key's name, for golden-logit tests.

No RNG: the same tensors on every machine and torch version, so logits recorded once in ``tests/data``
can be compared bit for bit. A sine hash of the key gives noise in [-1, 1); conv weights get He scale
(variance 2/fan_in), BatchNorm statistics and scales stay near identity so activations remain finite
through 100 layers. Each golden file was recorded with its own constants (``Formula``), kept here.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch

__all__ = ["Formula", "fixed_state"]


@dataclass(frozen=True)
class Formula:
    modulus: int  # crc32(key) % modulus / divisor: the key's phase
    divisor: float
    frequency: float
    amplitude: float
    var_spread: float  # running_var = 1 + var_spread * (1 + s)
    bn_weight: tuple[float, float]  # BatchNorm weight = base + scale * s


def fixed_state(shapes: dict[str, list[int]], f: Formula) -> dict[str, torch.Tensor]:
    """float32 tensors (int64 zeros for ``num_batches_tracked``) for every key of ``shapes``."""
    out = {}
    for key, shape in shapes.items():
        n = math.prod(shape)
        phase = (zlib.crc32(key.encode()) % f.modulus) / f.divisor
        h = torch.sin(torch.arange(n, dtype=torch.float64) * f.frequency + phase) * f.amplitude
        s = (2.0 * (h - torch.floor(h)) - 1.0).reshape(shape)
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros(shape, dtype=torch.long)
            continue
        if key.endswith("running_var"):
            t = 1.0 + f.var_spread * (1.0 + s)
        elif key.endswith("running_mean") or key.endswith("bias"):
            t = 0.05 * s
        elif len(shape) == 1:  # BatchNorm weight
            t = f.bn_weight[0] + f.bn_weight[1] * s
        else:
            t = s * math.sqrt(6.0 / (n // shape[0]))  # uniform: variance 2 / fan_in
        out[key] = t.float()
    return out
