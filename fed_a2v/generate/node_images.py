"""Images on the nodes during training (`feda2v.generate_nodes_images_frequency`, as upstream).

Every N-th round each node renders its first `generate_images_per_node` held-out clips with the
global adapters of that round, which its evaluate message carries: rendering rounds are always
evaluation rounds (the server's `FedA2VStrategy.evaluates`). The images stay on the node, in its
own folder; the reply tells the server only how many were written and where. `diffusers`,
PIL and the FLUX code are imported only by a node that renders.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from fed_a2v.config.schema import Config, NodeConfig
from fed_a2v.encode.encoded_set import EncodedSet
from fed_a2v.model.adapters import Adapter

log = logging.getLogger(__name__)

FLUX_SCHNELL = "black-forest-labs/FLUX.1-schnell"

_PIPELINES: dict[tuple[str, str, str], Any] = {}  # (name, device, dtype) -> FluxPipeline


def renders(config: Config, server_round: int) -> bool:
    """Whether nodes render images after `server_round`."""
    every = config.feda2v.generate_nodes_images_frequency
    return bool(every) and server_round % every == 0


def pipeline_name(config: Config, node: NodeConfig) -> str:
    """The node's `pipeline`, else `feda2v.generation_pipeline`, else builtin:tiny-flux with
    builtin text models, the FLUX repository (or folder) T5 was read from, or FLUX.1-schnell."""
    # Deferred: fed_a2v.generate.flux needs the `generate` extra, which a node needs only
    # when it renders images ('feda2v.generate_nodes_images_frequency').
    from fed_a2v.generate.flux import TINY_FLUX, is_flux_source

    fa = config.feda2v
    if node.pipeline or fa.generation_pipeline:
        return str(node.pipeline or fa.generation_pipeline)
    if fa.t5_model_name.startswith("builtin:") and fa.clip_model_name.startswith("builtin:"):
        return TINY_FLUX
    return fa.t5_model_name if is_flux_source(fa.t5_model_name) else FLUX_SCHNELL


def node_folder_name(name: str) -> str:
    """A folder name for a node ("node 2" -> node_2, a node's JSON file -> its stem)."""
    stem = Path(name).stem if name.endswith(".json") else name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_") or "node"


def images_dir(config: Config, node: NodeConfig, node_name: str, cache_root: Path,
               run_id: int | str, server_round: int) -> Path:
    """`<node images_dir>/<run id>/round_<r>`, else `<feda2v.images_output_dir, or the node's
    cache/images>/<run id>/<node>/round_<r>`."""
    if node.images_dir:
        return Path(node.images_dir).expanduser() / str(run_id) / f"round_{server_round}"
    root = (Path(config.feda2v.images_output_dir).expanduser()
            if config.feda2v.images_output_dir else cache_root / "images")
    return root / str(run_id) / node_folder_name(node_name) / f"round_{server_round}"


def flux_pipeline(name: str, device: torch.device, dtype: str) -> Any:
    """The FLUX pipeline, loaded once per process (without text encoders:
    `fed_a2v.generate.flux`)."""
    # Deferred: fed_a2v.generate.flux needs the `generate` extra, which a node needs only
    # when it renders images ('feda2v.generate_nodes_images_frequency').
    from fed_a2v.generate.flux import load_flux_pipeline

    key = (name, str(device), dtype)
    if key not in _PIPELINES:
        log.info("loading the FLUX pipeline %s on %s (%s)", name, device, dtype)
        _PIPELINES[key] = load_flux_pipeline(name, device=str(device), dtype=dtype)
    return _PIPELINES[key]


@torch.no_grad()
def render_held_out(adapters: dict[str, Adapter], test: EncodedSet, stems: list[str],
                    config: Config, node: NodeConfig, device: torch.device, folder: Path) -> int:
    """Render the first `generate_images_per_node` held-out clips into `folder` as
    `<clip stem>.png`, clip i with seed `experiment.seed + i` (the same each round, so the
    rounds' images compare); returns how many were written."""
    # Deferred: fed_a2v.generate.flux needs the `generate` extra, which a node needs only when it
    # renders images ('feda2v.generate_nodes_images_frequency'); fed_a2v.model.pretrained
    # imports the audio encoders (`transformers`), which a node whose clips are all in the token
    # cache never imports (tests/test_node_startup.py).
    from fed_a2v.generate.flux import check_widths, render
    from fed_a2v.model.pretrained import adapter_conditioning

    fa = config.feda2v
    count = min(fa.generate_images_per_node, len(test))
    if count == 0:
        return 0
    pipeline = flux_pipeline(pipeline_name(config, node), device, config.experiment.dtype)
    check_widths(pipeline, adapters, "flux")
    for adapter in adapters.values():
        adapter.to(device).eval()
    tokens = test.tokens.batch(list(range(count))).to(device)
    cond = adapter_conditioning(adapters, tokens, "flux")
    seeds = [config.experiment.seed + i for i in range(count)]
    images = render(pipeline, cond, seeds, steps=fa.generation_steps,
                    guidance=fa.generation_guidance, height=fa.generation_size,
                    width=fa.generation_size)
    folder.mkdir(parents=True, exist_ok=True)
    for stem, image in zip(stems[:count], images, strict=True):
        image.save(folder / f"{stem}.png")
    log.info("rendered %d held-out clips into %s", count, folder)
    return count
