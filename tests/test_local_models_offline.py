"""Models by local directory (FLUX subfolder layout) and an ESC-50 folder, with no network:
a federation runs, and run again it encodes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fed_a2v.data.builtin.synthetic import ensure_synthetic_corpus
from fed_a2v.encode.encoders import (
    builtin_clip,
    builtin_t5,
    clip_targets,
    flux_tokenizer_subfolder,
    save_builtin,
    t5_targets,
)

PROMPTS = ["dog", "church bells", "the sound of a siren"]


def save_flux_layout(root: Path) -> Path:
    """`text_encoder`+`tokenizer` (CLIP) and `text_encoder_2`+`tokenizer_2` (T5), as FLUX."""
    for build, model_dir, tok_dir in ((builtin_clip, "text_encoder", "tokenizer"),
                                      (builtin_t5, "text_encoder_2", "tokenizer_2")):
        model, tokenizer = build()
        model.save_pretrained(root / model_dir)
        tokenizer.save_pretrained(root / tok_dir)
    return root


def test_flux_convention_for_tokenizer_subfolders() -> None:
    assert flux_tokenizer_subfolder("text_encoder") == "tokenizer"
    assert flux_tokenizer_subfolder("text_encoder_2") == "tokenizer_2"
    assert flux_tokenizer_subfolder("clip") == "clip"
    assert flux_tokenizer_subfolder(None) is None


def test_subfolder_models_give_the_builtin_targets(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    flux = save_flux_layout(tmp_path / "flux")
    assert torch.equal(clip_targets(str(flux), PROMPTS, subfolder="text_encoder"),
                       clip_targets("builtin:tiny-clip", PROMPTS))
    assert torch.equal(t5_targets(str(flux), PROMPTS, 17, subfolder="text_encoder_2"),
                       t5_targets("builtin:tiny-t5", PROMPTS, 17))
    # An explicit tokenizer subfolder overrides the convention.
    model, tokenizer = builtin_clip()
    model.save_pretrained(tmp_path / "odd" / "clip")
    tokenizer.save_pretrained(tmp_path / "odd" / "tok")
    assert torch.equal(clip_targets(str(tmp_path / "odd"), PROMPTS, subfolder="clip",
                                    tokenizer_subfolder="tok"),
                       clip_targets("builtin:tiny-clip", PROMPTS))
    bf16 = clip_targets(str(flux), PROMPTS, subfolder="text_encoder", dtype="bf16")
    assert bf16.dtype == torch.float32 and not torch.equal(
        bf16, clip_targets("builtin:tiny-clip", PROMPTS))


@pytest.fixture(scope="module")
def offline_experiment(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("offline")
    ast = save_builtin("builtin:tiny-ast", root / "models" / "ast")
    flux = save_flux_layout(root / "models" / "flux")
    esc50 = ensure_synthetic_corpus(root / "ESC-50-master", 5, 4, 20, 1.0, 44100)
    config = {
        "experiment": {"name": "offline", "output_dir": str(root / "runs"),
                       "cache_dir": str(root / "cache")},
        "federation": {"global_rounds": 2, "num_clients": 2, "local_epochs": 1},
        "dataset": {"name": "esc50", "path": str(esc50), "clip_seconds": 1.0,
                    "prompt_template": "the sound of a {label}"},
        "feda2v": {"audio_model_name": str(ast), "clip_model_name": str(flux),
                   "clip_model_subfolder": "text_encoder", "t5_model_name": str(flux),
                   "t5_model_subfolder": "text_encoder_2"},
    }
    path = root / "experiment.json"
    path.write_text(json.dumps(config))
    return path


def simulate(config: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "fed_a2v.cli", "simulate", "--config",
                           str(config)], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-5000:]
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.slow
def test_local_models_run_offline_and_encode_each_clip_once(offline_experiment: Path) -> None:
    first = simulate(offline_experiment)
    clips = 4 * 20  # every clip of the corpus is train or held-out on one of the two nodes
    assert first["encoded_clips"] == clips
    assert first["targets_source"] == "computed"
    second = simulate(offline_experiment)
    assert second["encoded_clips"] == 0
    assert second["cached_clips"] >= clips
    assert second["targets_source"] == "cache"
    # Targets travel once per node; each round only carries a few kB of config besides.
    assert second["control_bytes_per_round"] < 0.01 * second["adapter_bytes_per_round"]
