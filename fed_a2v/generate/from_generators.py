"""Images from the nodes' generators: `fed-a2v generate --generators DIR`, upstream's second
phase (its experiment files load the nodes' generators and render images per class from
generated token sequences).

Each node's latest generator files in the folder (`save_checkpoints`' names,
`<base>_node<id>_class_<c>_round_<r>.pt`) are loaded, the generators of a class are merged over
the nodes that hold it (`merge_generators`, as the server does), and each class draws
`per_class` token sequences, which go through the adapters and the FLUX pipeline exactly as
encoded clips do (`from_sound.render_tokens`).
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import torch

from fed_a2v.config.feda2v_section import FedA2VConfig
from fed_a2v.config.field_rules import ConfigError
from fed_a2v.generate.from_sound import (
    GenerateSettings,
    TokenInputs,
    check_settings,
    default_pipeline,
    render_tokens,
    unique_stems,
)
from fed_a2v.model.generators import ClassGenerator, NodePart, load_latest, merge_parts
from fed_a2v.model.pretrained import FedA2VAdapters

log = logging.getLogger(__name__)

DEFAULT_BASE = FedA2VConfig().generator_checkpoint_base_name  # "generator"
DEFAULT_PER_CLASS = 2


def file_pattern(base: str) -> str:
    """The generator files' names, as `save_checkpoints` writes them."""
    return f"{base}_node<id>_class_<c>_round_<r>.pt"


def load_parts(folder: Path, base: str, width: int) -> dict[str, list[NodePart]]:
    """Class -> its generators in each node's latest files in `folder`; a ConfigError for a
    folder without any, a file FedA2V cannot read, or tokens not `width` wide."""
    try:
        parts = load_latest(folder, base)
    except FileNotFoundError as err:
        raise ConfigError(f"{err}; --generator-base names another prefix") from err
    except ValueError as err:
        raise ConfigError(str(err)) from err
    for name, held in parts.items():
        for part in held:
            if part.generator.shape[-1] != width:
                raise ConfigError(
                    f"{part.path} (class {name}): its generator makes tokens "
                    f"{part.generator.shape[-1]} wide, the adapters' audio encoder {width}")
    log.info("generators of %d classes from %d nodes in %s", len(parts),
             len({p.node for held in parts.values() for p in held}), folder)
    return parts


def merged_generators(parts: dict[str, list[NodePart]]) -> dict[str, ClassGenerator]:
    """One generator per class (sorted), merged over its nodes with the largest rank among
    them; a ConfigError where they cannot be merged, or draw sequences of other shapes."""
    try:
        merged = merge_parts(parts)
    except (ValueError, RuntimeError) as err:
        raise ConfigError(f"the generators in the folder cannot be merged: {err}") from err
    shapes = {name: g.shape for name, g in merged.items()}
    if len(set(shapes.values())) > 1:
        raise ConfigError(f"the generators draw token sequences of different shapes: {shapes}")
    return merged


def image_stem(name: str, index: int) -> str:
    """A file stem for sample `index` of class `name`: characters other than letters, digits,
    `.`, `_` and `-` become `_`."""
    safe = re.sub(r"[^\w.-]+", "_", name).strip("._") or "class"
    return f"{safe}-{index}"


def sample_inputs(generators: dict[str, ClassGenerator], per_class: int,
                  seed: int) -> TokenInputs:
    """`per_class` samples of each class, classes in sorted order, class k drawn from
    `torch.Generator().manual_seed(seed + k)`; each labelled with its class."""
    tokens: list[torch.Tensor] = []
    files: list[str] = []
    labels: list[str | None] = []
    names: list[Path] = []
    for k, name in enumerate(sorted(generators)):
        drawn = generators[name].sample(per_class, torch.Generator().manual_seed(seed + k))
        tokens.extend(drawn)
        files.extend(f"generator:{name}#{i}" for i in range(per_class))
        labels.extend([name] * per_class)
        names.extend(Path(f"{image_stem(name, i)}.png") for i in range(per_class))
    return TokenInputs(tokens, files, unique_stems(names), labels)


def describe(parts: dict[str, list[NodePart]], merged: dict[str, ClassGenerator],
             adapters: FedA2VAdapters) -> dict[str, Any]:
    """`generate.json`'s account of each class: its nodes, clips, rank, whether the adapters
    know it."""
    return {name: {"nodes": [p.node for p in parts[name]],
                   "files": [p.path.name for p in parts[name]],
                   "clips": merged[name].count, "rank": len(merged[name].basis),
                   "known": name in adapters.class_names}
            for name in merged}


def generate_from_generators(adapters_source: str, folder: str | Path, out_dir: str | Path,
                             settings: GenerateSettings, base: str = DEFAULT_BASE,
                             per_class: int = DEFAULT_PER_CLASS) -> dict[str, Any]:
    """Images of `per_class` generated token sequences per class of the nodes' generators in
    `folder` into `out_dir`, laid out as `generate`'s (each record's `file`
    `generator:<class>#<i>`, its `label` the class); the report is returned."""
    check_settings(settings)
    if per_class < 1:
        raise ConfigError(f"per-class must be at least 1, got {per_class}")
    adapters = FedA2VAdapters.from_pretrained(adapters_source, device=settings.device)
    pipeline_name = settings.pipeline or default_pipeline(adapters)
    started = time.perf_counter()
    parts = load_parts(Path(folder), base, adapters.config["dims"]["d_audio"])
    merged = merged_generators(parts)
    inputs = sample_inputs(merged, per_class, settings.seed)
    sample_seconds = time.perf_counter() - started
    unknown = [name for name in merged if name not in adapters.class_names]
    if unknown:
        log.warning("classes the adapters do not know (compared with their nearest class): %s",
                    ", ".join(unknown))
    extra = {"generators": {"folder": str(folder), "base": base, "per_class": per_class,
                            "classes": describe(parts, merged, adapters)}}
    return render_tokens(adapters, adapters_source, pipeline_name, inputs, out_dir, settings,
                         encode_seconds=sample_seconds, noun="generated samples", extra=extra)
