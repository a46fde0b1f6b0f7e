"""Text targets, one per prompt per adapter, made once where the text encoders are: CLIP pooled
and T5 sequence for FLUX (`feda2v.diffusion_type` "flux"), CLIP sequence for Stable Diffusion
("sd").

A prompt is a class name through `dataset.prompt_template`, or a clip's own caption when the
corpus has captions. Targets are cached on disk by models and prompts, or read from a file that
`fed-a2v targets` wrote, in which case no text encoder is loaded at all.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.schema import Config
from fed_a2v.data.corpora import Corpus
from fed_a2v.encode.cache import cache_root, fingerprint
from fed_a2v.encode.encoders import (
    class_prompt,
    clip_targets,
    flux_tokenizer_subfolder,
    model_identity,
    t5_targets,
)
from fed_a2v.encode.target_set import Targets

log = logging.getLogger(__name__)


def target_prompts(corpus: Corpus, config: Config) -> tuple[list[str], list[str]]:
    """(names, prompts): the corpus's captions if it has any, else its classes."""
    if corpus.has_captions:
        missing = [str(c.path) for c in corpus.clips if not c.caption]
        if missing:
            raise ConfigError(f"{corpus.root}: the manifest has captions, but not for "
                              f"{len(missing)} clips, e.g. {missing[0]}")
        names = sorted({c.caption for c in corpus.clips})
        return names, names
    template = config.dataset.prompt_template
    return list(corpus.classes), [class_prompt(c, template) for c in corpus.classes]


def compute_targets(config: Config, names: list[str], prompts: list[str]) -> Targets:
    """The targets of `feda2v.diffusion_type`; sd loads no T5 encoder."""
    fa, ex = config.feda2v, config.experiment
    log.info("computing %s text targets for %d prompts", fa.diffusion_type, len(prompts))
    sd = fa.diffusion_type == "sd"
    clip = clip_targets(fa.clip_model_name, prompts, ex.device, fa.clip_model_subfolder,
                        fa.clip_tokenizer_subfolder, ex.dtype,
                        sequence_length=fa.clip_max_length if sd else None)
    if sd:
        return Targets(names, prompts, {"clip": clip})
    t5 = t5_targets(fa.t5_model_name, prompts, fa.t5_max_length, ex.device,
                    fa.t5_model_subfolder, fa.t5_tokenizer_subfolder, ex.dtype)
    return Targets(names, prompts, {"clip": clip, "t5": t5})


def check_targets(targets: Targets, config: Config, source: str) -> None:
    """Targets fit the experiment's adapters: one tensor per adapter, sequences as long as
    the adapter's latents (a targets file made for the other diffusion type does not)."""
    fa = config.feda2v
    expected = {"flux": {"clip": 2, "t5": 3}, "sd": {"clip": 3}}[fa.diffusion_type]
    lengths = {"t5": fa.t5_max_length, "clip": fa.clip_max_length}
    shapes = {name: tuple(t.shape) for name, t in targets.tensors.items()}
    ok = set(shapes) == set(expected) and all(
        len(shapes[n]) == dims and (dims == 2 or shapes[n][1] == lengths[n])
        for n, dims in expected.items())
    if not ok:
        raise ConfigError(
            f"{source}: targets of shapes {shapes} do not fit 'feda2v.diffusion_type' "
            f"'{fa.diffusion_type}' (clip_max_length {fa.clip_max_length}, t5_max_length "
            f"{fa.t5_max_length}); make them again with `fed-a2v targets`")


def text_encoder_identity(name: str, subfolder: str | None,
                          tokenizer_subfolder: str | None) -> list:
    """A text encoder and its tokenizer as the targets cache knows them: by what they are
    (`model_identity`), so changed local weights are a new key."""
    tokenizer = tokenizer_subfolder or flux_tokenizer_subfolder(subfolder)
    return [name, subfolder, tokenizer, model_identity(name, (subfolder, tokenizer))]


def targets_for(config: Config, corpus: Corpus) -> Targets:
    """From `feda2v.targets_file`, else the cache (keyed by what the models are and the
    prompts), else computed (and cached)."""
    names, prompts = target_prompts(corpus, config)
    fa = config.feda2v
    if fa.targets_file:
        targets = Targets.load(Path(fa.targets_file), f"file:{fa.targets_file}")
        check_targets(targets, config, fa.targets_file)
        unknown = sorted(set(names) - set(targets.names))
        if unknown:
            raise ConfigError(f"{fa.targets_file}: has no target for {len(unknown)} of the "
                              f"corpus's prompts, e.g. '{unknown[0]}'; make it again")
        return targets
    clip = text_encoder_identity(fa.clip_model_name, fa.clip_model_subfolder,
                                 fa.clip_tokenizer_subfolder)
    if fa.diffusion_type == "sd":
        key = fingerprint("sd", clip, fa.clip_max_length, config.experiment.dtype, names,
                          prompts)
    else:
        key = fingerprint("flux", clip, text_encoder_identity(
            fa.t5_model_name, fa.t5_model_subfolder, fa.t5_tokenizer_subfolder),
            fa.t5_max_length, config.experiment.dtype, names, prompts)
    path = cache_root(config.experiment.cache_dir) / "targets" / f"{key}.safetensors"
    if path.exists():
        return Targets.load(path, "cache")
    targets = compute_targets(config, names, prompts)
    targets.save(path)
    return targets
