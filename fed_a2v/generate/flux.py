"""FLUX pipelines conditioned by the adapters: loaded without any text encoder, or built tiny.

`builtin:tiny-flux` is a seeded, randomly initialised `FluxPipeline` built from configs (a
one-block transformer and VAE), as wide as the built-in CLIP and T5, so adapters trained on the
built-in targets drive it offline. `save_tiny_flux` writes it as a FLUX-layout folder (with the
built-in text encoders and tokenizers) that works as `--pipeline DIR` and as the training target
source. Any other name is a local FLUX-layout folder or a hub id, loaded with
`text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fed_a2v.config.field_rules import ConfigError
from fed_a2v.encode.encoders import (
    BUILTIN_CLIP_WIDTH,
    BUILTIN_T5_WIDTH,
    DTYPES,
    _seeded,
    builtin_clip,
    builtin_t5,
    resolve_device,
)
from fed_a2v.extras import require
from fed_a2v.model.adapters import Adapter

if TYPE_CHECKING:
    # Deferred: importing diffusers takes seconds; only building a pipeline needs it.
    from diffusers import FluxPipeline
    from PIL import Image

# Everything here draws with diffusers (whose images are PIL's): importing this module without
# them names the extra that brings them.
require("generate", "diffusers", "PIL", what="FLUX image generation")

log = logging.getLogger(__name__)

TINY_FLUX = "builtin:tiny-flux"
NO_TEXT_ENCODERS = {"text_encoder": None, "text_encoder_2": None, "tokenizer": None,
                    "tokenizer_2": None}


def _tiny_components() -> dict:
    """The transformer, VAE and scheduler of `builtin:tiny-flux`, seeded."""
    # Deferred: importing diffusers takes seconds; only building a pipeline needs it.
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    transformer = _seeded(lambda: FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=BUILTIN_T5_WIDTH,
        pooled_projection_dim=BUILTIN_CLIP_WIDTH, axes_dims_rope=[4, 4, 8]))
    vae = _seeded(lambda: AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D"], block_out_channels=[4], layers_per_block=1,
        latent_channels=1, norm_num_groups=1, sample_size=32, use_quant_conv=False,
        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035))
    return {"transformer": transformer, "vae": vae,
            "scheduler": FlowMatchEulerDiscreteScheduler()}


def save_tiny_flux(directory: str | Path) -> Path:
    """Write `builtin:tiny-flux` as a full FLUX-layout folder: `model_index.json`, transformer,
    VAE, scheduler, text_encoder (built-in CLIP) + tokenizer, text_encoder_2 (built-in T5) +
    tokenizer_2. Offline; for tests and for trying the folder code paths."""
    # Deferred: importing diffusers takes seconds; only building a pipeline needs it.
    from diffusers import FluxPipeline

    clip, clip_tokenizer = builtin_clip()
    t5, t5_tokenizer = builtin_t5()
    pipeline = FluxPipeline(text_encoder=clip, tokenizer=clip_tokenizer, text_encoder_2=t5,
                            tokenizer_2=t5_tokenizer, **_tiny_components())
    pipeline.save_pretrained(directory)
    return Path(directory)


def is_flux_source(name: str | None) -> bool:
    """Whether `name` can be a pipeline: the tiny built-in, a folder with a FluxPipeline
    `model_index.json`, or a hub id naming FLUX."""
    if not name:
        return False
    if name == TINY_FLUX:
        return True
    index = Path(name) / "model_index.json"
    if index.is_file():
        return "Flux" in index.read_text(encoding="utf-8")
    return not Path(name).exists() and "/" in name and "flux" in name.lower()


def load_flux_pipeline(name_or_dir: str, device: str = "cpu", dtype: str = "fp32",
                       cpu_offload: bool = False) -> FluxPipeline:
    """A `FluxPipeline` with no text encoder and no tokenizer: conditioning comes from the
    adapters. `cpu_offload` keeps each component on the CPU until it runs (needs CUDA)."""
    # Deferred: importing diffusers takes seconds; only building a pipeline needs it.
    from diffusers import FluxPipeline

    if dtype not in DTYPES:
        raise ConfigError(f"dtype '{dtype}' must be one of {', '.join(DTYPES)}")
    if name_or_dir == TINY_FLUX:
        pipeline = FluxPipeline(**NO_TEXT_ENCODERS, **_tiny_components())
        if dtype != "fp32":
            pipeline.to(dtype=DTYPES[dtype])
    elif name_or_dir.startswith("builtin:"):
        raise ConfigError(f"unknown built-in pipeline '{name_or_dir}'; built-in: {TINY_FLUX}")
    else:
        try:
            # torch_dtype: the name older diffusers releases know too (newer ones take dtype).
            pipeline = FluxPipeline.from_pretrained(name_or_dir, torch_dtype=DTYPES[dtype],
                                                    **NO_TEXT_ENCODERS)
        except (OSError, ValueError, TypeError) as err:
            raise ConfigError(f"{name_or_dir}: cannot load a FLUX pipeline from it (a hub id "
                              f"or a folder with model_index.json, transformer/, vae/, "
                              f"scheduler/): {err}") from err
    target = resolve_device(device)
    if cpu_offload:
        if target.type != "cuda":
            raise ConfigError(f"--cpu-offload moves each component to a CUDA device when it "
                              f"runs; device is '{device}'")
        require("generate", "accelerate", what="--cpu-offload")  # diffusers offloads with it
        pipeline.enable_model_cpu_offload(device=target)
    else:
        pipeline.to(target)
    pipeline.set_progress_bar_config(disable=True)
    log.info("pipeline %s on %s (%s)%s", name_or_dir, target, dtype,
             ", components offloaded to the CPU" if cpu_offload else "")
    return pipeline


def pipeline_widths(pipeline: FluxPipeline) -> dict[str, int]:
    """What the transformer is conditioned on: T5 width (`prompt_embeds`), CLIP width
    (`pooled_prompt_embeds`)."""
    config = pipeline.transformer.config
    return {"t5": int(config.joint_attention_dim), "clip": int(config.pooled_projection_dim)}


def check_widths(pipeline: FluxPipeline, adapters: dict[str, Adapter],
                 diffusion_type: str) -> None:
    """The adapters' output widths are the pipeline's; a ConfigError names both numbers."""
    if diffusion_type != "flux":
        raise ConfigError(f"these adapters condition '{diffusion_type}', not FLUX: a "
                          "FLUX pipeline needs adapters trained with diffusion_type 'flux'")
    wanted = pipeline_widths(pipeline)
    what = {"t5": "T5 adapter width vs the transformer's joint_attention_dim (prompt_embeds)",
            "clip": "CLIP adapter width vs the transformer's pooled_projection_dim "
                    "(pooled_prompt_embeds)"}
    for name, width in wanted.items():
        have = int(adapters[name].out_features)
        if have != width:
            raise ConfigError(f"the adapters do not fit this pipeline: {what[name]}: {have} != "
                              f"{width}; use the pipeline whose text encoders made the "
                              "adapters' targets")


@torch.no_grad()
def render(pipeline: FluxPipeline, cond: dict[str, torch.Tensor], seeds: list[int],
           steps: int = 1, guidance: float = 0.0, height: int = 512,
           width: int = 512) -> list[Image.Image]:
    """One image per row of `cond` (`prompt_embeds` `(B, L, d_t5)`, `pooled_prompt_embeds`
    `(B, d_clip)`), row i drawn from noise seeded with `seeds[i]` (CPU generators, so a seed
    gives the same noise on any device)."""
    count = cond["prompt_embeds"].shape[0]
    if len(seeds) != count:
        raise ValueError(f"{len(seeds)} seeds for {count} conditionings")
    multiple = pipeline.vae_scale_factor * 2
    if height % multiple or width % multiple:
        raise ConfigError(f"image size {height}x{width}: height and width must be multiples of "
                          f"{multiple} for this pipeline")
    dtype = pipeline.transformer.dtype
    device = pipeline._execution_device
    result = pipeline(
        prompt_embeds=cond["prompt_embeds"].to(device, dtype),
        pooled_prompt_embeds=cond["pooled_prompt_embeds"].to(device, dtype),
        num_inference_steps=steps, guidance_scale=guidance, height=height, width=width,
        generator=[torch.Generator("cpu").manual_seed(int(s)) for s in seeds],
        output_type="pil")
    return list(result.images)
