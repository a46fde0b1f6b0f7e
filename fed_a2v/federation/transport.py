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

Packed (both ways: the global adapters a node receives, the update it sends back): Flower moves
every Array of a message (and every 5 MB chunk of one) as an object of its own, each with its
own calls on each hop, so a message costs per array (about 60 ms each per round on the
deployment engine here, whatever its bytes: `benchmarks/message_objects.py`). The adapters
therefore travel as one ArrayRecord holding one 1-D Array, `packed`: every tensor flattened
(C order) in the wire dtype, one after another, in the order of `names`; the ConfigRecord
beside it (`transport` in a reply, `arrays-index` in an instruction) holds `names` and
`shapes` (JSON lists). The server reads a packed update without copying it and decodes one
tensor at a time from its slice of the buffer, so it never holds a decoded copy of an update.
(Flower itself, joining a pulled Array's chunks, holds that one Array twice for a moment: with
one Array per update that is one model more of server memory than with one per tensor,
docs/performance.md.) An update whose index or buffer does not fit is refused, naming the node.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord

from fed_a2v.config.schema import TRANSPORT_DTYPES

WIRE_DTYPES = {"fp32": np.dtype(np.float32), "fp16": np.dtype(np.float16),
               "bf16": np.dtype(np.uint16), "int8": np.dtype(np.int8)}
SCALE_PREFIX = "scale."
PACKED = "packed"  # the one Array of a packed ArrayRecord


def pack(arrays: Mapping[str, np.ndarray]) -> tuple[ArrayRecord, dict[str, str]]:
    """Arrays of one dtype as one ArrayRecord of one flat Array, and the index (`names`,
    `shapes`) that unpacks it; nothing to pack (a standalone node's): an empty record."""
    if not arrays:
        return ArrayRecord(), {}
    dtypes = {np.dtype(a.dtype) for a in arrays.values()}
    if len(dtypes) != 1:
        raise ValueError(f"packed arrays share one dtype; these have {sorted(map(str, dtypes))}")
    flat = np.concatenate([np.ascontiguousarray(a).reshape(-1) for a in arrays.values()])
    return (ArrayRecord({PACKED: Array(flat)}),
            {"names": json.dumps(list(arrays)),
             "shapes": json.dumps([list(np.shape(a)) for a in arrays.values()])})


class PackIndex:
    """Where each tensor lies in a packed buffer: `slices[name]` (offset, shape); `problem`
    says why the index cannot be read or does not fit `length` values."""

    def __init__(self, meta: Mapping, length: int) -> None:
        self.slices: dict[str, tuple[int, tuple[int, ...]]] = {}
        self.problem = self._read(meta, length)

    def _read(self, meta: Mapping, length: int) -> str | None:
        try:
            names = json.loads(str(meta["names"]))
            shapes = [tuple(int(n) for n in shape) for shape in json.loads(str(meta["shapes"]))]
        except (KeyError, ValueError, TypeError) as err:
            return f"malformed packed update: its index cannot be read ({err!r})"
        if len(names) != len(shapes) or len(set(names)) != len(names) or \
                any(n < 0 for shape in shapes for n in shape):
            return "malformed packed update: its names and shapes do not pair up"
        offset = 0
        for name, shape in zip(names, shapes, strict=True):
            self.slices[str(name)] = offset, shape
            offset += int(np.prod(shape, dtype=np.int64))
        if offset != length:
            return (f"malformed packed update: its index holds {offset} values, its buffer "
                    f"{length}")
        return None

    def get(self, flat: np.ndarray, name: str) -> np.ndarray:
        offset, shape = self.slices[name]
        return flat[offset:offset + int(np.prod(shape, dtype=np.int64))].reshape(shape)


def flat_view(array: Array) -> np.ndarray:
    """The 1-D numpy array a Flower Array holds, read in place from its bytes (no copy) where
    it is stored as numpy's `.npy` format (Flower's `numpy.ndarray` stype), else decoded."""
    stream = io.BytesIO(array.data)
    try:
        version = np.lib.format.read_magic(stream)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read(stream)
    except ValueError:
        return array.numpy().reshape(-1)
    if dtype.hasobject:
        raise ValueError("an object array is not an adapter buffer")
    count = int(np.prod(shape, dtype=np.int64))
    return np.frombuffer(array.data, dtype=dtype, count=count, offset=stream.tell())


def unpack(arrays: ArrayRecord, index: Mapping | None) -> dict[str, np.ndarray]:
    """The tensors of an ArrayRecord: a packed one (with its index) or one Array each."""
    if PACKED not in arrays or index is None:
        return {k: v.numpy() for k, v in arrays.items()}
    flat = arrays[PACKED].numpy()
    packing = PackIndex(index, flat.size)
    if packing.problem:
        raise ValueError(packing.problem)
    return {name: packing.get(flat, name) for name in packing.slices}


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
    """A node's adapters as its reply carries them: packed (`pack`), and a `transport`
    ConfigRecord naming the dtype, the index and, for int8, each tensor's scale."""
    arrays, meta = {}, {"dtype": dtype}
    for key, value in state.items():
        arrays[key], scale = encode_tensor(value, reference.get(key), dtype)
        if scale is not None:
            meta[SCALE_PREFIX + key] = scale
    packed, index = pack(arrays)
    return packed, ConfigRecord({**meta, **index})


class WireUpdate(Mapping[str, np.ndarray]):
    """A reply's adapters, packed or one Array per tensor, decoded one tensor at a time on
    access (so the server never holds a decoded copy of the whole update). `problem` says why
    it cannot be decoded, if so."""

    def __init__(self, arrays: ArrayRecord, meta: Mapping | None,
                 reference: Mapping[str, np.ndarray], dtype: str) -> None:
        self.arrays, self.reference, self.dtype = arrays, reference, dtype
        self.scales: dict[str, float] = {}
        self.flat: np.ndarray | None = None  # a packed update's buffer, read in place
        self.index: PackIndex | None = None
        self.problem = self._check(meta)

    def _check(self, meta: Mapping | None) -> str | None:
        sent = str(meta.get("dtype", "")) if meta is not None else "fp32"
        if sent != self.dtype:
            return f"the update travels as '{sent}', the federation's transport_dtype is " \
                   f"'{self.dtype}'"
        wire = WIRE_DTYPES[self.dtype]
        if PACKED in self.arrays:
            if len(self.arrays) != 1 or meta is None:
                return "malformed packed update: expected its one array and its index"
            try:
                self.flat = flat_view(self.arrays[PACKED])
            except ValueError as err:
                return f"malformed packed update: its buffer cannot be read ({err})"
            self.index = PackIndex(meta, self.flat.size)
            if self.index.problem:
                return self.index.problem
        dtypes = ({PACKED: self.flat.dtype} if self.flat is not None
                  else {k: a.dtype for k, a in self.arrays.items()})
        for key, found in dtypes.items():
            if np.dtype(found) != wire:
                return (f"'{key}' has dtype {found} on the wire, expected {wire} "
                        f"(transport_dtype {self.dtype})")
        for key in self if self.dtype == "int8" else ():
            scale = meta.get(SCALE_PREFIX + key)
            if not isinstance(scale, float) or not np.isfinite(scale) or scale <= 0:
                return f"'{key}' has no positive finite int8 scale"
            self.scales[key] = scale
        return None

    def shape_of(self, key: str) -> tuple[int, ...]:
        return self.index.slices[key][1] if self.index else tuple(self.arrays[key].shape)

    def __getitem__(self, key: str) -> np.ndarray:
        wire = (self.index.get(self.flat, key) if self.index is not None
                else self.arrays[key].numpy())
        if key in self.reference:  # an unexpected key: screening names it
            wire = decode_tensor(wire, self.reference[key], self.dtype, self.scales.get(key))
        # a packed fp32 tensor is a view of the reply's bytes: a copy of this tensor alone
        return wire if wire.flags.writeable else wire.copy()

    def __iter__(self) -> Iterator[str]:
        return iter(self.index.slices if self.index is not None else self.arrays.keys())

    def __len__(self) -> int:
        return len(self.index.slices) if self.index is not None else len(self.arrays)
