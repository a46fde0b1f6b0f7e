"""Torch devices and dtypes by name, and the prefix of the built-in models, without
`transformers` (a node that only reads cached tokens imports this, not
`fed_a2v.encode.encoders`)."""

from __future__ import annotations

import torch

# Models FedA2V builds itself, offline ("builtin:tiny-ast", ...: fed_a2v.encode.encoders).
BUILTIN = "builtin:"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but no CUDA device is available")
    return torch.device(device)
