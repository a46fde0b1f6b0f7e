"""The adapters package: save -> load elsewhere gives the same conditioning, a finished run's
final/ loads with no run directory or text encoder, standalone runs leave none, hub ids resolve
through snapshot_download."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.validate import config_from_dict
from fed_a2v.encode.encoders import describe_audio_encoder
from fed_a2v.encode.text_targets import compute_targets
from fed_a2v.model.adapters import adapters_for_targets, adapters_state
from fed_a2v.model.pretrained import FedA2VAdapters, package_config

from drills import LoopbackGrid, experiment_dict, run_in_process

CLASSES = ["dog", "siren", "drum"]


def fresh_package(tmp_path: Path, diffusion_type: str = "flux",
                  **feda2v) -> FedA2VAdapters:
    """Adapters as a run builds them (builtin encoders, random init), in a package."""
    config = config_from_dict(experiment_dict(
        tmp_path, "pkg", feda2v={"diffusion_type": diffusion_type, "adapter_hidden_dim": 32,
                                 **feda2v}))
    config.dataset.prompt_template = "a photo of a {label}"
    targets = compute_targets(config, CLASSES, [f"a photo of a {c}" for c in CLASSES])
    audio, features = describe_audio_encoder(config.feda2v.audio_model_name)
    adapters = adapters_for_targets(audio.hidden_size, targets.tensors, config.feda2v, seed=3)
    dims = {"d_audio": audio.hidden_size,
            **{f"d_{n}": targets.tensors[n].shape[-1] for n in adapters}}
    run = {"name": "pkg-test", "rounds": 1, "seed": 3}
    return FedA2VAdapters.from_state(package_config(config, targets, dims, features, run),
                                     adapters_state(adapters), targets)


def moved(folder: Path, elsewhere: Path) -> Path:
    """The package copied to another place, the original removed: nothing points back."""
    shutil.copytree(folder, elsewhere)
    shutil.rmtree(folder)
    return elsewhere


def test_flux_package_round_trip_gives_identical_conditioning(tmp_path: Path) -> None:
    package = fresh_package(tmp_path)
    tokens = torch.randn(2, 7, package.config["dims"]["d_audio"])
    before = package.conditioning(tokens)
    folder = package.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "targets.safetensors"]
    assert {k.split(".")[0] for k in load_file(folder / "model.safetensors")} == {"clip", "t5"}

    loaded = FedA2VAdapters.from_pretrained(moved(folder, tmp_path / "elsewhere" / "pkg"))
    after = loaded.conditioning(tokens)
    assert set(after) == {"prompt_embeds", "pooled_prompt_embeds"}
    assert after["prompt_embeds"].shape == (2, 17, loaded.config["dims"]["d_t5"])
    assert after["pooled_prompt_embeds"].shape == (2, loaded.config["dims"]["d_clip"])
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(a.training for a in loaded.adapters.values())
    assert loaded.class_names == CLASSES
    assert loaded.prompts == [f"a photo of a {c}" for c in CLASSES]
    assert loaded.diffusion_type == "flux" and loaded.audio_model_name == "builtin:tiny-ast"
    assert loaded.clip_seconds == 0.5 and loaded.dtype == "fp32"
    assert loaded.t5_source == "builtin:tiny-t5"
    assert loaded.config["prompt_template"] == "a photo of a {label}"
    assert loaded.config["audio"]["sampling_rate"] == 16000
    assert loaded.config["run"] == {"name": "pkg-test", "rounds": 1, "seed": 3}
    # Different clips, different conditioning.
    assert not torch.allclose(after["pooled_prompt_embeds"][0], after["pooled_prompt_embeds"][1])


def test_target_conditioning_is_nearest_to_its_own_class(tmp_path: Path) -> None:
    package = fresh_package(tmp_path)
    cond = package.target_conditioning([2, 0])
    assert cond["pooled_prompt_embeds"].shape == (2, package.config["dims"]["d_clip"])
    assert cond["prompt_embeds"].shape == (2, 17, package.config["dims"]["d_t5"])
    nearest = package.nearest(cond)
    assert [i for i, _ in nearest] == [2, 0]
    assert all(c == pytest.approx(1.0, abs=1e-5) for _, c in nearest)
    tokens = torch.randn(4, 5, package.config["dims"]["d_audio"])
    audio = package.nearest(package.conditioning(tokens))
    assert len(audio) == 4 and all(0 <= i < 3 and -1 <= c <= 1 for i, c in audio)


def test_sd_package_round_trip_and_cls_token_setting(tmp_path: Path) -> None:
    package = fresh_package(tmp_path, "sd", clip_max_length=24, use_cls_token_only=True)
    tokens = torch.randn(3, 6, package.config["dims"]["d_audio"])
    before = package.conditioning(tokens)
    # Only the first (CLS) token reaches the adapters, as in training with the setting on.
    cls_only = package.conditioning(tokens[:, :1])["prompt_embeds"]
    assert torch.equal(before["prompt_embeds"], cls_only)
    loaded = FedA2VAdapters.from_pretrained(
        moved(package.save_pretrained(tmp_path / "sd"), tmp_path / "sd-copy"))
    after = loaded.conditioning(tokens)
    assert set(after) == {"prompt_embeds"} and after["prompt_embeds"].shape[:2] == (3, 24)
    assert torch.equal(before["prompt_embeds"], after["prompt_embeds"])
    assert loaded.t5_source is None and set(loaded.adapters) == {"clip"}
    assert [i for i, _ in loaded.nearest(loaded.target_conditioning([1]))] == [1]


def test_hub_id_resolves_through_snapshot_download(tmp_path: Path, monkeypatch) -> None:
    folder = fresh_package(tmp_path).save_pretrained(tmp_path / "hub-snapshot")
    asked = []

    def snapshot_download(repo_id: str, **kwargs) -> str:
        asked.append((repo_id, sorted(kwargs.get("allow_patterns") or [])))
        return str(folder)

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    loaded = FedA2VAdapters.from_pretrained("someone/fed-a2v-adapters")
    assert asked == [("someone/fed-a2v-adapters", ["README.md", "config.json",
                                                   "model.safetensors", "targets.safetensors"])]
    assert loaded.class_names == CLASSES


def test_what_is_not_a_package_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a FedA2V adapters folder"):
        FedA2VAdapters.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no FedA2V adapters package"):
        FedA2VAdapters.from_pretrained(tmp_path / "empty")
    folder = fresh_package(tmp_path).save_pretrained(tmp_path / "future")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ConfigError, match="format version 99"):
        FedA2VAdapters.from_pretrained(folder)


def test_a_finished_runs_final_folder_is_a_package(tmp_path: Path, monkeypatch) -> None:
    experiment = experiment_dict(tmp_path, "packaged", output_dir=tmp_path / "runs",
                                 federation={"global_rounds": 2, "num_clients": 2,
                                             "min_clients": 2},
                                 dataset={"clips_per_class": 10,
                                          "prompt_template": "the sound of a {label}"},
                                 feda2v={"retrieval_loss_weight": 0.2})
    experiment["experiment"]["cache_dir"] = str(tmp_path / "cache")
    run_dir = run_in_process(experiment, tmp_path / "packaged.json", LoopbackGrid(2))
    summary = json.loads((run_dir / "summary.json").read_text())

    # No text encoder may load: the package carries its targets.
    import fed_a2v.encode.encoders as encoders

    def no_text_encoder(*args, **kwargs):
        raise AssertionError("a text encoder was loaded")

    monkeypatch.setattr(encoders, "load_text_encoder", no_text_encoder)
    final = moved(run_dir / "final", tmp_path / "copied-final")
    loaded = FedA2VAdapters.from_pretrained(final)
    shutil.copytree(final, run_dir / "final")
    assert FedA2VAdapters.from_pretrained(run_dir).config == loaded.config
    # The final adapters are the last round's global checkpoint.
    last = load_file(run_dir / "checkpoints" / "round-0002.safetensors")
    state = adapters_state(loaded.adapters)
    assert state.keys() == last.keys() and all(torch.equal(last[k], state[k]) for k in last)
    assert summary["adapter_bytes_per_round"] == sum(
        t.numel() * t.element_size() for t in state.values())

    config = loaded.config
    assert config["run"]["name"] == run_dir.name and config["run"]["rounds"] == 2
    assert config["run"]["seed"] == 1 and config["run"]["num_nodes"] == 2
    assert config["dims"]["t5_max_length"] == 17
    assert config["dims"]["d_audio"] == describe_audio_encoder("builtin:tiny-ast")[0].hidden_size
    assert config["prompt_template"] == "the sound of a {label}"
    assert loaded.prompts == [f"the sound of a {c}" for c in loaded.class_names]
    assert config["text_encoders"]["clip"]["model"] == "builtin:tiny-clip"
    card = (final / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: fed-a2v\ntags:\n")
    assert run_dir.name in card and "weighted_average" in card
    loss_lines = [line for line in card.splitlines() if line.startswith("- Loss: ")]
    assert loss_lines == ["- Loss: MSE + 0.2 x retrieval cross-entropy over the target rows "
                          "(temperature 0.1)"]
    metrics = card.split("## Final metrics")[1].split("## Use")[0]
    assert f"| eval_clip_top1 | {summary['eval_clip_top1']:.4g} |" in metrics
    assert "eval_gap" not in metrics  # a setting, not a metric
    assert "FedA2VAdapters.from_pretrained" in card
