"""The token cache's key for an audio encoder, kept on disk so that a node that only reads
cached tokens imports no `transformers`.

The key (`encoders.audio_encoder_key` and the clip length) describes the model through
`transformers`: its config, feature extractor and files. A deployed node answers every message in
a fresh process, so it would describe the model again each time. For a built-in model and a
local folder the key is kept under what decides it, read without `transformers`: the model's
name and files (a built-in: the source that builds it), the `transformers` version, the dtype
and the clip length. A hub id is described each time: its revision can move.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from fed_a2v.encode.cache import file_stamp, fingerprint
from fed_a2v.encode.devices import BUILTIN
from fed_a2v.files import atomic_write_text

BUILTINS_SOURCE = Path(__file__).with_name("encoders.py")  # where the built-ins are defined


def model_files(name: str) -> dict[str, list] | None:
    """Stamps of the files the model's description comes from; None for a hub id."""
    if name.startswith(BUILTIN):
        files = [BUILTINS_SOURCE]
    elif Path(name).is_dir():
        files = [p for p in sorted(Path(name).iterdir())
                 if p.is_file() and not p.name.startswith(".")]
    else:
        return None
    return {p.name: file_stamp(p) for p in files}


def token_cache_key(name: str, dtype: str, clip_seconds: float, root: Path) -> str:
    """`fingerprint(audio_encoder_key(name, dtype), clip_seconds)`, read from
    `root/tokens/keys/` when it was computed before from the same model files."""
    files = model_files(name)
    memo = None if files is None else root / "tokens" / "keys" / fingerprint(
        name, dtype, clip_seconds, files, version("transformers"))
    if memo is not None and memo.is_file():
        return memo.read_text().strip()
    from fed_a2v.encode.encoders import audio_encoder_key  # imports transformers

    key = fingerprint(audio_encoder_key(name, dtype), clip_seconds)
    if memo is not None:
        memo.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(memo, key)
    return key
