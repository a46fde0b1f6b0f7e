"""From sound to picture: `fed-a2v generate` (images from audio clips) and `fed-a2v embed` (the
conditioning tensors alone).

Clips are encoded exactly as in training (the same AST, features and token cache), the adapters
turn their tokens into `prompt_embeds` / `pooled_prompt_embeds`, and a FLUX pipeline without any
text encoder draws from those (`fed_a2v.generate.flux`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from fed_a2v.config.feda2v_section import FedA2VConfig
from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.schema import Config, DatasetConfig, ExperimentConfig, NodeConfig
from fed_a2v.data.clip_files import labels_near
from fed_a2v.data.corpora import Clip, read_manifest
from fed_a2v.encode.encoders import describe_audio_encoder
from fed_a2v.encode.node_data import Encoding, NodeIdentity
from fed_a2v.files import atomic_write
from fed_a2v.model.pretrained import FedA2VAdapters

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".mp3")
# With --compare-text, over each pair in the gallery: the clip's image, its class prompt's.
GALLERY_NAMES = ("from the audio", "from the text")


@dataclass(frozen=True)
class AudioInput:
    path: Path
    label: str | None = None  # the class the input names for it (a manifest, an ESC-50 csv)


def read_inputs(paths: list[str | Path]) -> list[AudioInput]:
    """Audio files, folders (searched recursively, sorted) and CSV manifests (`path,label`), in
    the order given, each file once. Labels come from a manifest given, else from the metadata
    in or up to two folders above a file's folder or the folder given (`clip_files.labels_near`:
    CSV manifests, ESC-50's `meta/esc50.csv`, upstream's `class_labels.json` + `fold0K.json`)."""
    found: dict[Path, AudioInput] = {}
    near: dict[Path, dict[Path, str]] = {}

    def labels(folder: Path) -> dict[Path, str]:
        if folder not in near:
            near[folder] = labels_near(folder)
        return near[folder]

    for given in paths:
        path = Path(given).expanduser()
        if path.suffix.lower() == ".csv" and path.is_file():
            items = [AudioInput(c.path, c.label) for c in read_manifest(path).clips]
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
            if not files:
                raise ConfigError(f"{path}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
            # The metadata nearest a file wins: in or above its own folder, else the one given.
            items = [AudioInput(p, labels(p.parent).get(p.resolve())
                                or labels(path).get(p.resolve())) for p in files]
        elif path.is_file():
            items = [AudioInput(path, labels(path.parent).get(path.resolve()))]
        else:
            raise ConfigError(f"{path}: no such audio file, folder or CSV manifest")
        for item in items:
            found.setdefault(item.path.resolve(), item)
    return list(found.values())


def audio_inputs(paths: list[str | Path]) -> list[Path]:
    """The audio files `paths` name (files, folders, CSV manifests), each once."""
    return [item.path for item in read_inputs(paths)]


def _encoding(adapters: FedA2VAdapters, cache_dir: str | None, device: str) -> Encoding:
    """Training's `Encoding` for the adapters' audio encoder: same features, same cache keys."""
    config = Config(
        experiment=replace(ExperimentConfig(), device=device, dtype=adapters.dtype,
                           cache_dir=cache_dir or ""),
        dataset=replace(DatasetConfig(), clip_seconds=adapters.clip_seconds),
        feda2v=replace(FedA2VConfig(), audio_model_name=adapters.audio_model_name))
    _, settings = describe_audio_encoder(adapters.audio_model_name)
    trained = adapters.config["audio"].get("features")
    if trained and trained != asdict(settings):
        log.warning("%s: its features now are %s, the adapters were trained on %s",
                    adapters.audio_model_name, asdict(settings), trained)
    return Encoding(config, NodeIdentity(NodeConfig(), 0, 1, "generate", "generate"))


def encode_clips(adapters: FedA2VAdapters, clips: list[Path], cache_dir: str | None = None,
                 device: str = "cpu") -> tuple[list[Path], list[torch.Tensor], list[str]]:
    """(the clips that could be read, their token tensors `(T, d_audio)`, "path: why" for each
    clip skipped), through the token cache training used."""
    encoding = _encoding(adapters, cache_dir, device)
    kept, arrays = encoding.encode([Clip(path, "", 0) for path in clips])
    if encoding.skipped:
        log.warning("skipped %d unreadable clips:\n  %s", len(encoding.skipped),
                    "\n  ".join(encoding.skipped))
    return ([c.path for c in kept], [torch.from_numpy(a[:].copy()).float() for a in arrays],
            encoding.skipped)


def unique_stems(paths: list[Path]) -> list[str]:
    """Each file's stem, with -2, -3, ... where a stem repeats."""
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        seen[path.stem] = seen.get(path.stem, 0) + 1
        stems.append(path.stem if seen[path.stem] == 1 else f"{path.stem}-{seen[path.stem]}")
    return stems


def default_pipeline(adapters: FedA2VAdapters) -> str:
    """The FLUX repository or folder the T5 targets came from; else a ConfigError."""
    # Deferred: fed_a2v.generate.flux needs the `generate` extra (diffusers, PIL); `embed` does not.
    from fed_a2v.generate.flux import is_flux_source

    source = adapters.t5_source
    if is_flux_source(source):
        return str(source)
    raise ConfigError(f"the adapters' T5 targets came from '{source}', which is not a FLUX "
                      "pipeline: pass --pipeline (builtin:tiny-flux for adapters trained on the "
                      "built-in models, a FLUX folder, or e.g. black-forest-labs/FLUX.1-schnell)")


@dataclass
class GenerateSettings:
    pipeline: str | None = None  # None: `default_pipeline`
    steps: int = 1  # as upstream ran FLUX.1-schnell
    guidance: float = 0.0
    height: int = 512
    width: int = 512
    seed: int = 0  # clip i gets seed + i
    batch_size: int = 4
    device: str = "cpu"
    dtype: str = "fp32"  # the pipeline's; the audio encoder runs as in training
    cpu_offload: bool = False
    compare_text: bool = False
    score_with: str | None = None
    cache_dir: str | None = None


def _cosines(pred: torch.Tensor, targets: torch.Tensor, rows: list[int]) -> list[float]:
    own = targets[torch.as_tensor(rows)].to(pred.device, torch.float32)
    return F.cosine_similarity(pred.flatten(1).float(), own.flatten(1), dim=1).tolist()


def _clip_target(adapters: FedA2VAdapters, label: str | None,
                 nearest: int) -> tuple[int, str]:
    """The class a clip is compared with: its own label if the adapters know it, else the
    nearest class."""
    if label is not None and label in adapters.class_names:
        return adapters.class_names.index(label), "label"
    return nearest, "nearest"


def _save(image, path: Path) -> None:
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def _scores(score_with: str, device: str, adapters: FedA2VAdapters, images: dict[str, list[Path]],
            truth: list[int]) -> dict[str, Any]:
    # Deferred: scoring loads a CLIP vision model and PIL (the `generate` extra), only for
    # --score-with.
    from fed_a2v.generate.scoring import ZeroShotScorer, classification_metrics

    scorer = ZeroShotScorer.load(score_with, device=device)
    out: dict[str, Any] = {"scorer": score_with}
    for kind, paths in images.items():
        predicted = scorer.classify(paths, adapters.class_names)
        out[kind] = {**classification_metrics(predicted, truth, len(adapters.class_names)),
                     "predicted": [adapters.class_names[i] for i in predicted]}
    return out


def check_settings(settings: GenerateSettings) -> None:
    """A ConfigError for a step count, batch size or image size under 1."""
    for name in ("steps", "batch_size", "height", "width"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name.replace('_', '-')} must be at least 1, got "
                              f"{getattr(settings, name)}")


@dataclass
class TokenInputs:
    """What `render_tokens` draws: one token sequence `(T, d_audio)` per image, each with the
    name its record's `file` gives, its image's file stem and its label (None: none)."""

    tokens: list[torch.Tensor]
    files: list[str]
    stems: list[str]
    labels: list[str | None]


def render_tokens(adapters: FedA2VAdapters, adapters_source: str | Path, pipeline_name: str,
                  inputs: TokenInputs, out_dir: str | Path, settings: GenerateSettings, *,
                  skipped: list[str] | None = None, encode_seconds: float = 0.0,
                  noun: str = "clips", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Image i from the adapters' conditioning of `inputs.tokens[i]` (seed `settings.seed + i`)
    into `out_dir`: `<stem>.png` (and `<stem>.text.png` with `compare_text`), `gallery.png`,
    `gallery.md` and `generate.json` (with `extra`'s keys added), whose content is returned.
    `noun` names the inputs in the gallery's title."""
    # Deferred: these need the `generate` extra (diffusers, PIL), which `embed` does without.
    from fed_a2v.generate import flux
    from fed_a2v.generate.gallery import GalleryItem, write_gallery

    out = Path(out_dir)
    pipeline = flux.load_flux_pipeline(pipeline_name, settings.device, settings.dtype,
                                       settings.cpu_offload)
    flux.check_widths(pipeline, adapters.adapters, adapters.diffusion_type)
    out.mkdir(parents=True, exist_ok=True)
    tokens, stems = inputs.tokens, inputs.stems
    size = {"steps": settings.steps, "guidance": settings.guidance,
            "height": settings.height, "width": settings.width}
    records: list[dict[str, Any]] = []
    for start in tqdm(range(0, len(tokens), settings.batch_size), desc="generating",
                      unit="batch", disable=None, leave=False):
        idx = list(range(start, min(start + settings.batch_size, len(tokens))))
        seeds = [settings.seed + i for i in idx]
        cond = adapters.conditioning(torch.stack([tokens[i] for i in idx]))
        nearest = adapters.nearest(cond)
        targets = [_clip_target(adapters, inputs.labels[i], n)
                   for i, (n, _) in zip(idx, nearest, strict=True)]
        cosines = _cosines(cond["pooled_prompt_embeds"], adapters.targets.tensors["clip"],
                           [row for row, _ in targets])
        tick = time.perf_counter()
        images = flux.render(pipeline, cond, seeds, **size)
        seconds = (time.perf_counter() - tick) / len(idx)
        if settings.compare_text:
            text_images = flux.render(pipeline, adapters.target_conditioning(
                [row for row, _ in targets]), seeds, **size)
        for j, i in enumerate(idx):
            _save(images[j], out / f"{stems[i]}.png")
            record = {"file": inputs.files[i], "image": f"{stems[i]}.png", "seed": seeds[j],
                      "label": inputs.labels[i],
                      "nearest_class": adapters.class_names[nearest[j][0]],
                      "nearest_cosine": nearest[j][1],
                      "target_class": adapters.class_names[targets[j][0]],
                      "target_from": targets[j][1], "cosine": cosines[j], "seconds": seconds}
            if settings.compare_text:
                _save(text_images[j], out / f"{stems[i]}.text.png")
                record["text_image"] = f"{stems[i]}.text.png"
            records.append(record)
    render_seconds = sum(r["seconds"] for r in records)
    scores = None
    if settings.score_with:
        images_by_kind = {"audio": [out / r["image"] for r in records]}
        if settings.compare_text:
            images_by_kind["text"] = [out / r["text_image"] for r in records]
        truth = [adapters.class_names.index(r["target_class"]) for r in records]
        scores = _scores(settings.score_with, settings.device, adapters, images_by_kind, truth)
        scores["truth"] = ("the clips' labels" if all(r["target_from"] == "label"
                                                      for r in records)
                           else "labels where the input gave them, else the nearest class")
    items = [GalleryItem(out / r["image"],
                         [Path(r["file"]).name, f"nearest: {r['nearest_class']} "
                          f"({r['nearest_cosine']:.2f})"]
                         + ([f"label: {r['label']}"] if r["label"] else [])
                         + ([f"text: {r['target_class']}"] if settings.compare_text else []),
                         out / r["text_image"] if settings.compare_text else None)
             for r in records]
    metrics = ({k: {m: v for m, v in s.items() if m != "predicted"}
                for k, s in scores.items() if isinstance(s, dict)} if scores else None)
    write_gallery(out, items, f"{Path(str(adapters_source)).name}: {len(records)} {noun}, "
                  f"{pipeline_name}, {settings.steps} steps", metrics, names=GALLERY_NAMES)
    report = {
        "adapters": str(adapters_source), "pipeline": pipeline_name,
        "settings": {**asdict(settings), "pipeline": pipeline_name},
        "seeds": [r["seed"] for r in records], "clips": records, "skipped": skipped or [],
        "totals": {"images": len(records), "encode_seconds": encode_seconds,
                   "render_seconds": render_seconds,
                   "seconds_per_image": render_seconds / len(records),
                   "device": settings.device},
        "scores": scores,
        **(extra or {}),
    }
    (out / "generate.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    log.info("%d images in %s (%.3f s per image)", len(records), out,
             render_seconds / len(records))
    return report


def generate(adapters_source: str, audio: list[str | Path], out_dir: str | Path,
             settings: GenerateSettings) -> dict[str, Any]:
    """Images for the clips `audio` names into `out_dir`: `<stem>.png` (and `<stem>.text.png`
    with `compare_text`), `gallery.png`, `gallery.md` and `generate.json`, whose content is
    returned."""
    check_settings(settings)
    adapters = FedA2VAdapters.from_pretrained(adapters_source, device=settings.device)
    pipeline_name = settings.pipeline or default_pipeline(adapters)
    inputs = read_inputs(audio)
    labels = {item.path: item.label for item in inputs}
    started = time.perf_counter()
    clips, tokens, skipped = encode_clips(adapters, [item.path for item in inputs],
                                          settings.cache_dir, settings.device)
    encode_seconds = time.perf_counter() - started
    if not clips:
        raise ConfigError(f"none of the {len(inputs)} audio files could be read: {skipped[:3]}")
    drawn = TokenInputs(tokens, [str(c) for c in clips], unique_stems(clips),
                        [labels[c] for c in clips])
    return render_tokens(adapters, adapters_source, pipeline_name, drawn, out_dir, settings,
                         skipped=skipped, encode_seconds=encode_seconds)


def embed(adapters_source: str, audio: list[str | Path], out_file: str | Path,
          device: str = "cpu", cache_dir: str | None = None) -> Path:
    """The adapters' conditioning for each clip into one safetensors file (`prompt_embeds`,
    and `pooled_prompt_embeds` for FLUX; row i is clip i, named in the metadata `clips`, with
    its label in `labels`: null where the inputs give none)."""
    adapters = FedA2VAdapters.from_pretrained(adapters_source, device=device)
    inputs = read_inputs(audio)
    labels = {item.path: item.label for item in inputs}
    clips, tokens, skipped = encode_clips(adapters, [item.path for item in inputs], cache_dir,
                                          device)
    if not clips:
        raise ConfigError(f"none of the audio files could be read: {skipped[:3]}")
    cond = adapters.conditioning(torch.stack(tokens))
    nearest = adapters.nearest(cond)
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"clips": json.dumps([str(c) for c in clips]),
                "labels": json.dumps([labels[c] for c in clips]),
                "nearest_classes": json.dumps([adapters.class_names[i] for i, _ in nearest]),
                "diffusion_type": adapters.diffusion_type, "adapters": str(adapters_source)}
    atomic_write(out, lambda tmp: save_file(
        {k: v.detach().float().cpu().contiguous() for k, v in cond.items()}, str(tmp),
        metadata=metadata))
    return out
