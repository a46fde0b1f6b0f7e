"""Images from the adapters: the FLUX pipeline without text encoders, `generate` and `embed`."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fed_a2v.adapters import build_adapters
from fed_a2v.config import ConfigError, FedA2VConfig
from fed_a2v.encoders import BUILTIN_CLIP_WIDTH, BUILTIN_T5_WIDTH, builtin_clip, builtin_t5
from fed_a2v.flux import (
    TINY_FLUX,
    check_widths,
    is_flux_source,
    load_flux_pipeline,
    pipeline_widths,
    render,
    save_tiny_flux,
)


@pytest.fixture(scope="module")
def tiny_pipeline():
    return load_flux_pipeline(TINY_FLUX)


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    return save_tiny_flux(tmp_path_factory.mktemp("tiny-flux"))


def _cond(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"prompt_embeds": torch.randn(n, 17, BUILTIN_T5_WIDTH, generator=g),
            "pooled_prompt_embeds": torch.randn(n, BUILTIN_CLIP_WIDTH, generator=g)}


def _pixels(images) -> list[np.ndarray]:
    return [np.asarray(im) for im in images]


def test_tiny_flux_is_as_wide_as_the_builtin_text_encoders(tiny_pipeline):
    assert pipeline_widths(tiny_pipeline) == {
        "t5": builtin_t5()[0].config.d_model, "clip": builtin_clip()[0].config.hidden_size}
    assert tiny_pipeline.text_encoder is None and tiny_pipeline.text_encoder_2 is None
    assert tiny_pipeline.tokenizer is None and tiny_pipeline.tokenizer_2 is None


def test_render_same_seed_same_pixels_other_seed_or_cond_differs(tiny_pipeline):
    cond = _cond(2)
    first = _pixels(render(tiny_pipeline, cond, [7, 8], steps=2, height=32, width=48))
    again = _pixels(render(tiny_pipeline, cond, [7, 8], steps=2, height=32, width=48))
    assert first[0].shape == (32, 48, 3)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert first[0].std() > 0
    reseeded = _pixels(render(tiny_pipeline, cond, [9, 8], steps=2, height=32, width=48))
    assert not np.array_equal(first[0], reseeded[0])
    assert np.array_equal(first[1], reseeded[1])  # each row has its own generator
    other = _pixels(render(tiny_pipeline, _cond(2, seed=1), [7, 8], steps=2, height=32,
                           width=48))
    assert not np.array_equal(first[0], other[0])


def test_render_rejects_sizes_the_latents_cannot_pack(tiny_pipeline):
    with pytest.raises(ConfigError, match="multiples of 2"):
        render(tiny_pipeline, _cond(1), [0], height=33, width=32)
    with pytest.raises(ValueError, match="2 seeds for 1"):
        render(tiny_pipeline, _cond(1), [0, 1], height=32, width=32)


def test_flux_layout_folder_loads_offline_without_text_encoders(flux_dir, tiny_pipeline):
    names = {p.name for p in flux_dir.iterdir()}
    assert {"model_index.json", "transformer", "vae", "scheduler", "text_encoder",
            "text_encoder_2", "tokenizer", "tokenizer_2"} <= names
    assert is_flux_source(str(flux_dir)) and is_flux_source(TINY_FLUX)
    assert is_flux_source("black-forest-labs/FLUX.1-schnell")
    assert not is_flux_source("builtin:tiny-t5") and not is_flux_source(None)
    loaded = load_flux_pipeline(str(flux_dir))
    assert loaded.text_encoder is None and loaded.text_encoder_2 is None
    assert loaded.tokenizer is None and loaded.tokenizer_2 is None
    cond = _cond(1)
    assert np.array_equal(*(_pixels(render(p, cond, [3], steps=2, height=32, width=32))[0]
                            for p in (loaded, tiny_pipeline)))


def test_unknown_pipelines_and_offload_without_cuda_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown built-in pipeline"):
        load_flux_pipeline("builtin:big-flux")
    with pytest.raises(ConfigError, match="cannot load a FLUX pipeline"):
        load_flux_pipeline(str(tmp_path))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            load_flux_pipeline(TINY_FLUX, cpu_offload=True)


def _adapters(d_clip: int, d_t5: int, diffusion_type: str = "flux") -> SimpleNamespace:
    cfg = FedA2VConfig(diffusion_type=diffusion_type)
    return SimpleNamespace(adapters=build_adapters(96, d_clip, d_t5, cfg),
                           diffusion_type=diffusion_type)


def test_check_widths_names_both_numbers(tiny_pipeline):
    check_widths(tiny_pipeline, _adapters(64, 64))
    with pytest.raises(ConfigError, match=r"joint_attention_dim.*: 4096 != 64"):
        check_widths(tiny_pipeline, _adapters(64, 4096))
    with pytest.raises(ConfigError, match=r"pooled_projection_dim.*: 768 != 64"):
        check_widths(tiny_pipeline, _adapters(768, 64))
    with pytest.raises(ConfigError, match="diffusion_type 'flux'"):
        check_widths(tiny_pipeline, _adapters(64, 64, "sd"))


def test_tiny_flux_folder_metadata_names_flux(flux_dir):
    index = json.loads((flux_dir / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
