"""The `README.md` model card of an adapters package, written from the run that trained it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import BUILTIN_DATASETS, Config

if TYPE_CHECKING:
    from .pretrained import FedA2VAdapters

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
            "```python", "from fed_a2v.pretrained import FedA2VAdapters", "",
            'adapters = FedA2VAdapters.from_pretrained("<this folder or hub id>")',
            "cond = adapters.conditioning(tokens)  # tokens: (B, T, d_audio) from the encoder",
            "print(adapters.nearest(cond))  # [(class index, cosine), ...]", "```", "",
            "Images from audio clips, and the conditioning alone:", "",
            "```bash", "fed-a2v generate <this folder> --audio clips/ --out gallery",
            "fed-a2v embed <this folder> --audio clips/ --out cond.safetensors", "```", ""]


def model_card(package: FedA2VAdapters, summary: dict[str, Any] | None = None,
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
