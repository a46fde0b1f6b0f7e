"""How a node's adapters travel back to the server (`federation.transport_dtype`).

| dtype | on the wire | bytes | error per value, after decoding |
|---|---|---|---|
| fp32 | float32 weights | 1 | none |
| fp16 | float16 weights | 1/2 | relative 2^-11 (values within ±65504) |
| bf16 | float32's upper 16 bits, rounded to nearest even (uint16) | 1/2 | relative 2^-8 |
| int8 | round((w - global) / s), s = max abs(w - global) / 127 per tensor | 1/4 | abs. s / 2 |

int8 sends deltas against the global adapters of the round (which the node received and the
server still holds), so its error scales with how far a node moved, not with the weights. The
server decodes one tensor at a time (`WireUpdate`) into the reference's dtype and averages in
float64 either way.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord

from fed_a2v.config.schema import TRANSPORT_DTYPES

WIRE_DTYPES = {"fp32": np.dtype(np.float32), "fp16": np.dtype(np.float16),
               "bf16": np.dtype(np.uint16), "int8": np.dtype(np.int8)}
SCALE_PREFIX = "scale."


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> the bfloat16 nearest (ties to even), as its 16 bits."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    return ((bits + rounding) >> 16).astype(np.uint16)


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def encode_tensor(value: np.ndarray, reference: np.ndarray, dtype: str
                  ) -> tuple[np.ndarray, float | None]:
    """One tensor as it travels in `dtype`, and its int8 scale (None for the other dtypes)."""
    if dtype == "fp32":
        return np.asarray(value, np.float32), None
    if dtype == "fp16":
        return value.astype(np.float16), None
    if dtype == "bf16":
        return to_bf16_bits(value), None
    if dtype == "int8":
        delta = value.astype(np.float32) - reference
        peak = float(np.max(np.abs(delta))) if delta.size else 0.0
        scale = peak / 127.0 if peak > 0 else 1.0
        return np.clip(np.rint(delta / scale), -127, 127).astype(np.int8), scale
    raise ValueError(f"transport dtype '{dtype}' is not one of {TRANSPORT_DTYPES}")


def decode_tensor(wire: np.ndarray, reference: np.ndarray, dtype: str,
                  scale: float | None) -> np.ndarray:
    """What `encode_tensor` sent, back in the reference's dtype."""
    if dtype == "int8":
        value = wire.astype(reference.dtype)
        value *= scale
        value += reference
        return value
    if dtype == "bf16":
        return from_bf16_bits(wire).astype(reference.dtype)
    return wire.astype(reference.dtype, copy=False)


def encode_update(state: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray],
                  dtype: str) -> tuple[ArrayRecord, ConfigRecord]:
    """A node's adapters as its reply carries them: the ArrayRecord and a `transport`
    ConfigRecord naming the dtype (and, for int8, each tensor's scale)."""
    arrays, meta = {}, {"dtype": dtype}
    for key, value in state.items():
        arrays[key], scale = encode_tensor(value, reference.get(key), dtype)
        if scale is not None:
            meta[SCALE_PREFIX + key] = scale
    return ArrayRecord({k: Array(v) for k, v in arrays.items()}), ConfigRecord(meta)


class WireUpdate(Mapping[str, np.ndarray]):
    """A reply's adapters, decoded one tensor at a time on access (so the server never holds
    a decoded copy of the whole update). `problem` says why it cannot be decoded, if so."""

    def __init__(self, arrays: ArrayRecord, meta: Mapping | None,
                 reference: Mapping[str, np.ndarray], dtype: str) -> None:
        self.arrays, self.reference, self.dtype = arrays, reference, dtype
        self.scales: dict[str, float] = {}
        self.problem = self._check(meta)

    def _check(self, meta: Mapping | None) -> str | None:
        sent = str(meta.get("dtype", "")) if meta is not None else "fp32"
        if sent != self.dtype:
            return f"the update travels as '{sent}', the federation's transport_dtype is " \
                   f"'{self.dtype}'"
        wire = WIRE_DTYPES[self.dtype]
        for key, array in self.arrays.items():
            if np.dtype(array.dtype) != wire:
                return (f"'{key}' has dtype {array.dtype} on the wire, expected {wire} "
                        f"(transport_dtype {self.dtype})")
            if self.dtype == "int8":
                scale = meta.get(SCALE_PREFIX + key)
                if not isinstance(scale, float) or not np.isfinite(scale) or scale <= 0:
                    return f"'{key}' has no positive finite int8 scale"
                self.scales[key] = scale
        return None

    def shape_of(self, key: str) -> tuple[int, ...]:
        return tuple(self.arrays[key].shape)

    def __getitem__(self, key: str) -> np.ndarray:
        wire = self.arrays[key].numpy()
        if key not in self.reference:  # an unexpected key: screening names it
            return wire
        return decode_tensor(wire, self.reference[key], self.dtype, self.scales.get(key))

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays.keys())

    def __len__(self) -> int:
        return len(self.arrays)
