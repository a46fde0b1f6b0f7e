"""A node's start-up per message: deployed, every message runs in a fresh process, so a node
whose tokens are cached must not import `transformers` (nor `diffusers`), a node that trains
must not import `torch._dynamo` (which `torch.optim` does: fed_a2v.model.optim), and the token
cache's key, kept on disk for that, must be the key `fed_a2v.encode.encoders` computes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch
from transformers import ASTModel

from fed_a2v.encode.cache import fingerprint
from fed_a2v.encode.encoders import audio_encoder_key, save_builtin
from fed_a2v.encode.token_keys import token_cache_key

from drills import (
    APP_DIR,
    LoopbackGrid,
    experiment_dict,
    fresh_node_command,
    pickled_train_messages,
    run_in_process,
)

# what a fresh node process must not import while its tokens are cached
HEAVY = ("transformers", "diffusers", "fed_a2v.encode.encoders", "fed_a2v.generate.flux",
         "torch._dynamo")


def replay(message: Path) -> dict:
    """The node's message handled in a fresh process (drills.FRESH_NODE); its report."""
    done = subprocess.run(fresh_node_command(message, HEAVY), capture_output=True, text=True,
                          timeout=300, cwd=APP_DIR)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_node_with_cached_tokens_trains_without_transformers(tmp_path: Path) -> None:
    experiment = experiment_dict(tmp_path, "startup", federation={"global_rounds": 1,
                                                                  "num_clients": 2,
                                                                  "min_clients": 2})
    experiment["experiment"]["cache_dir"] = str(tmp_path / "cache")
    grid = LoopbackGrid(2)
    run_in_process(experiment, tmp_path / "startup.json", grid)  # encodes into the cache
    message = pickled_train_messages(grid, tmp_path, server_round=1)[1]
    reply = replay(message)
    assert reply["imported"] == []
    assert reply["metrics"]["encoded-clips"] == 0 and reply["metrics"]["cached-clips"] > 0
    assert reply["metrics"]["train_seconds"] > 0

    # With the key's record gone the node describes the AST again: same key, same cache.
    for memo in (tmp_path / "cache" / "tokens" / "keys").iterdir():
        memo.unlink()
    reply = replay(message)
    assert "transformers" in reply["imported"] and reply["metrics"]["encoded-clips"] == 0


def test_the_kept_key_is_the_encoders_key_and_follows_local_weights(tmp_path: Path) -> None:
    cache = tmp_path / "cache"

    def described(name: str, dtype: str = "fp32", seconds: float = 0.5) -> str:
        return fingerprint(audio_encoder_key(name, dtype), seconds)

    for args in (("builtin:tiny-ast", "fp32", 0.5), ("builtin:tiny-ast", "bf16", 0.5),
                 ("builtin:tiny-ast", "fp32", 1.0)):
        assert token_cache_key(*args, cache) == described(*args)  # computed and kept
        assert token_cache_key(*args, cache) == described(*args)  # read back
    assert len(list((cache / "tokens" / "keys").iterdir())) == 3

    local = save_builtin("builtin:tiny-ast", tmp_path / "ast")
    first = token_cache_key(str(local), "fp32", 0.5, cache)
    assert first == described(str(local))
    model = ASTModel.from_pretrained(local)
    with torch.no_grad():
        next(model.parameters()).mul_(2.0)  # "retrained" in place
    model.save_pretrained(local)
    changed = token_cache_key(str(local), "fp32", 0.5, cache)
    assert changed != first and changed == described(str(local))


def test_no_kept_key_for_a_hub_id(tmp_path: Path, monkeypatch) -> None:
    import fed_a2v.encode.encoders as encoders

    monkeypatch.setattr(encoders, "audio_encoder_key", lambda name, dtype: f"{name} {dtype}")
    key = token_cache_key("someone/some-ast", "fp32", 0.5, tmp_path)
    assert key == fingerprint("someone/some-ast fp32", 0.5)
    assert not (tmp_path / "tokens" / "keys").exists()
