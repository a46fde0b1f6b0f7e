"""The trained adapters as a self-describing package: `config.json`, `model.safetensors`
(keys `clip.*`, `t5.*`), `targets.safetensors` (the class targets) and a `README.md` model
card. A run writes one to `final/`; it loads with no run directory and no text encoder.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from fed_a2v.config.feda2v_section import FedA2VConfig
from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.schema import BUILTIN_DATASETS, Config
from fed_a2v.data.audio import FeatureSettings
from fed_a2v.encode.encoders import resolve_device
from fed_a2v.encode.text_targets import Targets
from fed_a2v.files import atomic_write_text
from fed_a2v.model.adapters import (
    Adapter,
    adapters_for_targets,
    adapters_state,
    load_adapters_state,
    save_adapters,
)

log = logging.getLogger(__name__)

FORMAT = "fed-a2v-adapters"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TARGETS_NAME = "targets.safetensors"
CARD_NAME = "README.md"
PACKAGE_FILES = (CONFIG_NAME, WEIGHTS_NAME, TARGETS_NAME, CARD_NAME)
ADAPTER_KEYS = ("adapter_dropout", "adapter_hidden_dim", "adapter_num_heads",
                "adapter_mlp_ratio", "adapter_norm_groups", "use_cls_token_only",
                "adapter_design", "span_adapters", "adapter_token_statistics")
# Which conditioning tensor each adapter makes, per diffusion type.
CONDITIONING = {"flux": {"clip": "pooled_prompt_embeds", "t5": "prompt_embeds"},
                "sd": {"clip": "prompt_embeds"}}


def adapter_conditioning(adapters: dict[str, Adapter], tokens: torch.Tensor,
                         diffusion_type: str) -> dict[str, torch.Tensor]:
    """Each adapter's output under the name the diffusion pipeline takes it by."""
    return {CONDITIONING[diffusion_type][name]: adapter(tokens)
            for name, adapter in adapters.items()}


def package_config(config: Config, targets: Targets, dims: dict[str, int],
                   features: FeatureSettings, run: dict[str, Any]) -> dict[str, Any]:
    """`config.json` of the package a run of `config` leaves: everything needed to rebuild the
    adapters and to feed them audio as training did. `dims`: `d_audio`, `d_clip`, `d_t5`
    (flux); `run`: what the model card tells about the run (name, rounds, seed, ...)."""
    fa = config.feda2v
    encoders = {"clip": {"model": fa.clip_model_name, "subfolder": fa.clip_model_subfolder,
                         "tokenizer_subfolder": fa.clip_tokenizer_subfolder}}
    if fa.diffusion_type == "flux":
        encoders["t5"] = {"model": fa.t5_model_name, "subfolder": fa.t5_model_subfolder,
                          "tokenizer_subfolder": fa.t5_tokenizer_subfolder}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "diffusion_type": fa.diffusion_type,
        "dims": {**dims, "t5_max_length": fa.t5_max_length,
                 "clip_max_length": fa.clip_max_length},
        "adapter": {key: getattr(fa, key) for key in ADAPTER_KEYS},
        "audio": {"model": fa.audio_model_name, "dtype": config.experiment.dtype,
                  "clip_seconds": config.dataset.clip_seconds,
                  "sampling_rate": features.sampling_rate, "features": asdict(features)},
        "text_encoders": encoders,
        "targets_source": targets.source,
        "class_names": list(targets.names),
        "prompts": list(targets.prompts),
        "prompt_template": config.dataset.prompt_template,
        "run": run,
    }


def _adapter_settings(config: dict[str, Any]) -> FedA2VConfig:
    dims = config["dims"]
    # packages written before these settings existed: full adapters on pooled latents alone
    adapter = {"span_adapters": [], "adapter_token_statistics": False} | config["adapter"]
    return FedA2VConfig(diffusion_type=config["diffusion_type"],
                        t5_max_length=dims["t5_max_length"],
                        clip_max_length=dims["clip_max_length"], **adapter)


class FedA2VAdapters:
    """Trained FedA2V adapters with what they were trained on: audio tokens in, a diffusion
    model's conditioning out (`conditioning`), and the class targets they aimed at."""

    def __init__(self, config: dict[str, Any], adapters: dict[str, Adapter], targets: Targets,
                 device: str = "cpu") -> None:
        self.config = config
        self.device = resolve_device(device)
        self.adapters = {name: a.to(self.device).eval() for name, a in adapters.items()}
        self.targets = targets

    @classmethod
    def from_state(cls, config: dict[str, Any], state: dict[str, torch.Tensor],
                   targets: Targets, device: str = "cpu") -> FedA2VAdapters:
        """The adapters `config` describes, with the weights of `state` (keys `clip.*`,
        `t5.*`)."""
        adapters = adapters_for_targets(config["dims"]["d_audio"], targets.tensors,
                                        _adapter_settings(config))
        load_adapters_state(adapters, state)
        return cls(config, adapters, targets, device)

    @classmethod
    def from_pretrained(cls, source: str | Path, device: str = "cpu") -> FedA2VAdapters:
        """From a package folder, a run directory (its `final/`), or a hub id (downloaded with
        huggingface_hub's `snapshot_download`)."""
        folder = resolve_package(source)
        config = json.loads((folder / CONFIG_NAME).read_text())
        version = config.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ConfigError(f"{folder}: package format version {version!r}; this FedA2V "
                              f"reads up to {FORMAT_VERSION}: update fed-a2v")
        for name in (WEIGHTS_NAME, TARGETS_NAME):
            if not (folder / name).is_file():
                raise ConfigError(f"{folder}: {name} is missing from the package")
        state = load_file(str(folder / WEIGHTS_NAME))
        targets = Targets.load(folder / TARGETS_NAME, f"package:{folder}")
        log.info("adapters from %s (%s, %d classes)", folder, config["diffusion_type"],
                 len(targets.names))
        return cls.from_state(config, state, targets, device)

    def save_pretrained(self, directory: str | Path, model_card: str | None = None) -> Path:
        """Write the package into `directory`; the model card is `model_card`, else one made
        from the config alone. Returns the folder."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in adapters_state(self.adapters).items()}
        save_adapters(state, folder / WEIGHTS_NAME,
                      {"format": FORMAT, "format_version": str(FORMAT_VERSION)})
        self.targets.save(folder / TARGETS_NAME)
        atomic_write_text(folder / CARD_NAME, model_card or package_card(self))
        # config.json last: a folder with it is a whole package.
        atomic_write_text(folder / CONFIG_NAME, json.dumps(self.config, indent=2))
        return folder

    @property
    def diffusion_type(self) -> str:
        return self.config["diffusion_type"]

    @property
    def class_names(self) -> list[str]:
        return list(self.targets.names)

    @property
    def prompts(self) -> list[str]:
        return list(self.targets.prompts)

    @property
    def audio_model_name(self) -> str:
        return self.config["audio"]["model"]

    @property
    def clip_seconds(self) -> float:
        return float(self.config["audio"]["clip_seconds"])

    @property
    def dtype(self) -> str:
        """The audio encoder's precision in training (`fp32`, `fp16`, `bf16`)."""
        return self.config["audio"]["dtype"]

    @property
    def t5_source(self) -> str | None:
        """The model id or folder the T5 targets came from (None for sd)."""
        t5 = self.config["text_encoders"].get("t5")
        return t5["model"] if t5 else None

    @torch.no_grad()
    def conditioning(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Audio tokens `(B, T, d_audio)` to the diffusion model's conditioning: flux
        `prompt_embeds` `(B, t5_max_length, d_t5)` and `pooled_prompt_embeds` `(B, d_clip)`,
        sd `prompt_embeds` `(B, clip_max_length, d_clip)`."""
        if self.config["adapter"]["use_cls_token_only"]:
            tokens = tokens[:, :1]
        return adapter_conditioning(self.adapters, tokens.to(self.device, torch.float32),
                                    self.diffusion_type)

    def target_conditioning(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """The conditioning of the stored class targets `indices`: what the text encoders made
        of those classes' prompts."""
        rows = torch.as_tensor(indices, dtype=torch.long)
        return {CONDITIONING[self.diffusion_type][name]:
                self.targets.tensors[name][rows].to(self.device, torch.float32)
                for name in self.adapters}

    def nearest(self, cond: dict[str, torch.Tensor]) -> list[tuple[int, float]]:
        """Per sample: the class whose target is nearest by cosine, and that cosine, as
        evaluation's top-1 ranks them (the CLIP adapter's output against the CLIP targets)."""
        pred = cond[CONDITIONING[self.diffusion_type]["clip"]].detach().float().cpu()
        targets = self.targets.tensors["clip"].float()
        sims = F.normalize(pred.flatten(1), dim=1) @ F.normalize(targets.flatten(1), dim=1).T
        best = sims.max(dim=1)
        return [(int(i), float(c)) for i, c in zip(best.indices, best.values, strict=True)]


def _is_package(folder: Path) -> bool:
    path = folder / CONFIG_NAME
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("format") == FORMAT
    except (json.JSONDecodeError, AttributeError):
        return False


def resolve_package(source: str | Path) -> Path:
    """The package folder `source` names: itself, a run directory's `final/`, or a hub
    repository's snapshot. A clear error for a run that left no package (standalone)."""
    path = Path(source).expanduser()
    if path.is_dir():
        for folder in (path, path / "final"):
            if _is_package(folder):
                return folder.resolve()
        raise ConfigError(_no_package(path))
    if path.exists() or str(source).startswith((".", "/", "~")) or str(source).count("/") != 1:
        raise ConfigError(f"{source}: not a FedA2V adapters folder, run directory or hub id")
    # Here, not at the top: a hub download is the only use (huggingface_hub comes with
    # transformers, which a node reading cached tokens never imports).
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(repo_id=str(source), allow_patterns=list(PACKAGE_FILES)))
    if not _is_package(folder):
        raise ConfigError(f"{source}: the hub repository holds no FedA2V adapters package "
                          f"({CONFIG_NAME} with format '{FORMAT}')")
    return folder


def _no_package(path: Path) -> str:
    """Why the folder `path` holds no package, as precisely as the run directory tells."""
    summary_path = path / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if summary.get("standalone"):
            return (f"{path}: a standalone run (adapter_aggregation_mode 'none'): every node "
                    "kept its own adapters on its own disk, so there are no global adapters "
                    "to load (see summary.json 'standalone' for each node's file)")
        return f"{path}: the run finished but its final/ holds no adapters package"
    if (path / "metrics.jsonl").is_file():
        return f"{path}: the run has not finished, so final/ holds no adapters yet"
    return (f"{path}: no FedA2V adapters package here ({CONFIG_NAME} with format '{FORMAT}') "
            "and no run directory with one in final/")


TAGS = ("fed-a2v", "audio-to-image", "federated-learning", "flower", "adapters")


def _front_matter(package: FedA2VAdapters) -> list[str]:
    tags = [*TAGS, package.diffusion_type]
    return ["---", "library_name: fed-a2v", "tags:", *[f"- {t}" for t in tags], "---", ""]


def _data_lines(package: FedA2VAdapters, summary: dict[str, Any],
                run_config: Config | None) -> list[str]:
    names = package.class_names
    lines = ["## Data", ""]
    if run_config is not None:
        ds = run_config.dataset
        kind = ds.name + (f" ({ds.num_classes} classes x {ds.clips_per_class} generated clips)"
                          if ds.name in BUILTIN_DATASETS else "")
        lines.append(f"- Dataset: {kind}, {ds.clip_seconds:g} s per clip")
    lines += [f"- {len(names)} classes: " + ", ".join(f"`{n}`" for n in names),
              f"- Prompt template: `{package.config.get('prompt_template', '{label}')}`"]
    counts = {k: summary[k] for k in ("encoded_clips", "cached_clips", "skipped_clips")
              if k in summary}
    if counts:
        lines.append("- Clips read by the nodes over the run: "
                     + ", ".join(f"{v} {k.split('_')[0]}" for k, v in counts.items()))
    return [*lines, ""]


def _training_lines(package: FedA2VAdapters, summary: dict[str, Any],
                    run_config: Config | None) -> list[str]:
    run = package.config.get("run", {})
    audio, encoders = package.config["audio"], package.config["text_encoders"]
    lines = ["## Training", "",
             f"- Run: `{run.get('name', '?')}`, seed {run.get('seed', '?')}",
             f"- Nodes: {summary.get('num_nodes', run.get('num_nodes', '?'))}, rounds: "
             f"{summary.get('rounds', run.get('rounds', '?'))}, aggregation: "
             f"{summary.get('adapter_aggregation_mode', run.get('aggregation_mode', '?'))}"]
    if run_config is not None:
        tr = run_config.training
        lines.append(f"- Local epochs {run_config.federation.local_epochs}, batch size "
                     f"{tr.batch_size}, learning rate {tr.learning_rate:g}")
        fa = run_config.feda2v
        loss = "per-class mean MSE" if fa.use_per_class_loss else "MSE"
        if fa.retrieval_loss_weight:
            loss += (f" + {fa.retrieval_loss_weight:g} x retrieval cross-entropy over the target "
                     f"rows (temperature {fa.retrieval_temperature:g})")
        lines.append(f"- Loss: {loss}")
    lines += [f"- Audio encoder: `{audio['model']}` ({audio['dtype']}, "
              f"{audio['clip_seconds']:g} s clips at {audio['sampling_rate']} Hz)",
              *[f"- {name.upper()} targets from `{e['model']}`"
                + (f" (subfolder `{e['subfolder']}`)" if e.get("subfolder") else "")
                for name, e in encoders.items()]]
    if "wall_seconds" in summary:
        lines.append(f"- Wall time: {summary['wall_seconds']} s")
    return [*lines, ""]


def _metric_lines(summary: dict[str, Any]) -> list[str]:
    metrics = {k: v for k, v in summary.items() if k.split("_")[0] in ("eval", "val")
               and k.endswith(("_mse", "_cosine", "_top1")) and isinstance(v, float)}
    if not metrics:
        return []
    return ["## Final metrics", "",
            "Held-out (`eval_*`) and validation (`val_*`) clips after the last evaluated round; "
            "top-1: the nearest class target by cosine is the clip's own.", "",
            "| metric | value |", "|---|---|",
            *[f"| {k} | {v:.4g} |" for k, v in metrics.items()], ""]


def _usage_lines(package: FedA2VAdapters) -> list[str]:
    cond = ("`prompt_embeds` and `pooled_prompt_embeds` of a FLUX pipeline"
            if package.diffusion_type == "flux" else "`prompt_embeds` of Stable Diffusion")
    return ["## Use", "",
            f"The adapters turn audio-encoder tokens into {cond}; no text encoder is needed.", "",
            "```python", "from fed_a2v.model.pretrained import FedA2VAdapters", "",
            'adapters = FedA2VAdapters.from_pretrained("<this folder or hub id>")',
            "cond = adapters.conditioning(tokens)  # tokens: (B, T, d_audio) from the encoder",
            "print(adapters.nearest(cond))  # [(class index, cosine), ...]", "```", "",
            "Images from audio clips, and the conditioning alone:", "",
            "```bash", "fed-a2v generate <this folder> --audio clips/ --out gallery",
            "fed-a2v embed <this folder> --audio clips/ --out cond.safetensors", "```", ""]


def package_card(package: FedA2VAdapters, summary: dict[str, Any] | None = None,
               run_config: Config | None = None) -> str:
    """The card's markdown: front matter, data, training, final metrics, how to use it."""
    summary = summary or {}
    run = package.config.get("run", {})
    title = f"# FedA2V adapters: {run['name']}" if run.get("name") else "# FedA2V adapters"
    lines = [*_front_matter(package), title, "",
             f"Audio-to-{package.diffusion_type.upper()} conditioning adapters trained with "
             "federated learning (FedA2V, Flower): the clips never left the nodes.", "",
             *_data_lines(package, summary, run_config),
             *_training_lines(package, summary, run_config),
             *_metric_lines(summary), *_usage_lines(package),
             "Files: `config.json` (dimensions, adapter settings, audio and text-encoder ids, "
             "classes, prompts), `model.safetensors` (keys `clip.*`, `t5.*`), "
             "`targets.safetensors` (the class targets)."]
    return "\n".join(lines) + "\n"
