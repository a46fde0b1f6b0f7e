"""Images from the adapters: the FLUX pipeline without text encoders, `generate` and `embed`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open
from test_pretrained import fresh_package

from fed_a2v.cli import EXIT_CONFIG, main
from fed_a2v.config.feda2v_section import FedA2VConfig
from fed_a2v.config.field_rules import ConfigError
from fed_a2v.data.builtin.synthetic import ensure_synthetic_corpus
from fed_a2v.encode.encoders import (
    BUILTIN_CLIP_WIDTH,
    BUILTIN_T5_WIDTH,
    builtin_clip,
    builtin_t5,
    clip_targets,
    t5_targets,
)
from fed_a2v.encode.text_targets import Targets
from fed_a2v.generate import flux
from fed_a2v.generate.flux import (
    TINY_FLUX,
    check_widths,
    is_flux_source,
    load_flux_pipeline,
    pipeline_widths,
    render,
    save_tiny_flux,
)
from fed_a2v.generate.from_sound import (
    GenerateSettings,
    audio_inputs,
    encode_clips,
    generate,
    read_inputs,
    unique_stems,
)
from fed_a2v.generate.scoring import write_tiny_clip
from fed_a2v.model.adapters import adapters_state, build_adapters
from fed_a2v.model.pretrained import FedA2VAdapters

from drills import LoopbackGrid, experiment_dict, run_in_process


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


def _adapters(d_clip: int, d_t5: int, diffusion_type: str = "flux") -> tuple[dict, str]:
    cfg = FedA2VConfig(diffusion_type=diffusion_type)
    return build_adapters(96, d_clip, d_t5, cfg, target_rows=3), diffusion_type


def test_check_widths_names_both_numbers(tiny_pipeline):
    check_widths(tiny_pipeline, *_adapters(64, 64))
    with pytest.raises(ConfigError, match=r"joint_attention_dim.*: 4096 != 64"):
        check_widths(tiny_pipeline, *_adapters(64, 4096))
    with pytest.raises(ConfigError, match=r"pooled_projection_dim.*: 768 != 64"):
        check_widths(tiny_pipeline, *_adapters(768, 64))
    with pytest.raises(ConfigError, match="diffusion_type 'flux'"):
        check_widths(tiny_pipeline, *_adapters(64, 64, "sd"))


def test_tiny_flux_folder_metadata_names_flux(flux_dir):
    index = json.loads((flux_dir / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"


# --- generate / embed ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """A flux adapters package on the built-in encoders (classes dog, siren, drum)."""
    root = tmp_path_factory.mktemp("package")
    return fresh_package(root).save_pretrained(root / "pkg")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """An ESC-50-layout folder: dog, rooster, siren, 2 clips each."""
    return ensure_synthetic_corpus(tmp_path_factory.mktemp("corpus") / "esc", 0, 3, 2, 0.5,
                                   16000)


def _settings(tmp_path: Path, **kw) -> GenerateSettings:
    return GenerateSettings(**{"pipeline": TINY_FLUX, "steps": 2, "height": 32, "width": 32,
                               "cache_dir": str(tmp_path / "cache"), **kw})


def test_inputs_from_files_folders_and_manifests_with_their_labels(corpus, tmp_path):
    wavs = sorted((corpus / "audio").glob("*.wav"))
    from_folder = read_inputs([corpus / "audio"])
    assert [i.path for i in from_folder] == wavs
    assert {i.path.name: i.label for i in from_folder}["1-000000-A-0.wav"] == "dog"
    assert [i.label for i in read_inputs([corpus])][:1] == ["dog"]  # the ESC-50 root
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\n{wavs[1]},drum\n{wavs[0]},dog\n")
    inputs = read_inputs([manifest, wavs[0], corpus / "audio"])
    assert [(i.path, i.label) for i in inputs[:2]] == [(wavs[1], "drum"), (wavs[0], "dog")]
    assert len(inputs) == len(wavs)  # each file once, in the order first named
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(wavs[0], loose / "a.wav")
    assert read_inputs([loose / "a.wav"])[0].label is None
    assert audio_inputs([loose]) == [loose / "a.wav"]
    with pytest.raises(ConfigError, match="no such audio file"):
        read_inputs([tmp_path / "missing.wav"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no audio files"):
        read_inputs([tmp_path / "empty"])


def test_a_folder_takes_its_labels_from_a_manifest_in_or_above_it(corpus, tmp_path):
    wavs = sorted((corpus / "audio").glob("*.wav"))
    clips = tmp_path / "data" / "clips"
    clips.mkdir(parents=True)
    for n, wav in enumerate(wavs[:3]):
        shutil.copy(wav, clips / f"c{n}.wav")
    # A manifest beside the folder (relative paths), and one in it: the nearest wins.
    (tmp_path / "data" / "labels.csv").write_text(
        "path,label\nclips/c0.wav,siren\nclips/c1.wav,drum\n")
    assert [i.label for i in read_inputs([clips])] == ["siren", "drum", None]
    (clips / "manifest.csv").write_text(f"path,label\nc1.wav,dog\n{clips / 'c2.wav'},siren\n")
    assert [i.label for i in read_inputs([clips])] == ["siren", "dog", "siren"]
    assert read_inputs([clips / "c0.wav"])[0].label == "siren"  # a file: its folder's too
    # A CSV without path and label columns is no manifest; metadata three folders up is too far.
    (clips / "notes.csv").write_text("when,what\n1,x\n")
    deep = tmp_path / "data" / "a" / "b" / "c"
    deep.mkdir(parents=True)
    shutil.copy(wavs[0], deep / "d.wav")
    assert read_inputs([deep])[0].label is None


def test_upstream_esc50_fold_folders_get_their_labels(tmp_path):
    root = tmp_path / "esc"
    (root / "audio" / "fold00").mkdir(parents=True)
    (root / "audio" / "fold00" / "a.wav").write_bytes(b"RIFF")  # labels need no audio
    (root / "class_labels.json").write_text(json.dumps({"dog": 0}))
    (root / "fold00.json").write_text(json.dumps({"a.wav": ["dog"]}))
    assert [i.label for i in read_inputs([root / "audio" / "fold00"])] == ["dog"]


def test_generate_labels_clips_from_a_manifest_beside_their_folder(package, corpus, tmp_path):
    wavs = sorted((corpus / "audio").glob("*.wav"))
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(wavs[0], clips / "x.wav")
    (tmp_path / "manifest.csv").write_text("path,label\nclips/x.wav,siren\n")
    report = generate(str(package), [clips], tmp_path / "out",
                      _settings(tmp_path, compare_text=True))
    clip = report["clips"][0]
    assert (clip["label"], clip["target_class"], clip["target_from"]) == ("siren", "siren",
                                                                          "label")
    md = (tmp_path / "out" / "gallery.md").read_text()
    # The two columns say which image is which.
    assert "| from the audio | from the text | caption |" in md
    assert "label: siren<br>text: siren" in md


def test_unique_stems_number_repeats():
    assert unique_stems([Path("a/x.wav"), Path("b/x.wav"), Path("y.wav"), Path("c/x.flac")]) \
        == ["x", "x-2", "y", "x-3"]


def test_encode_clips_uses_the_training_token_cache_and_skips_bad_files(package, corpus,
                                                                        tmp_path):
    adapters = FedA2VAdapters.from_pretrained(package)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    wavs = sorted((corpus / "audio").glob("*.wav"))[:2]
    kept, tokens, skipped = encode_clips(adapters, [wavs[0], bad, wavs[1]],
                                         str(tmp_path / "cache"))
    assert kept == wavs and len(skipped) == 1 and str(bad) in skipped[0]
    assert tokens[0].shape[-1] == adapters.config["dims"]["d_audio"]
    assert len(list((tmp_path / "cache" / "tokens").rglob("*.npy"))) == 2
    again = encode_clips(adapters, wavs, str(tmp_path / "cache"))[1]
    assert all(torch.equal(a, b) for a, b in zip(tokens, again, strict=True))
    assert not torch.equal(tokens[0], tokens[1])


def test_generate_writes_images_gallery_and_report_same_seed_same_bytes(package, corpus,
                                                                        tmp_path, monkeypatch):
    def no_text_model(self, *args, **kwargs):
        raise AssertionError("a text encoder was instantiated during generation")

    monkeypatch.setattr(transformers.CLIPTextModel, "__init__", no_text_model)
    monkeypatch.setattr(transformers.T5EncoderModel, "__init__", no_text_model)
    loaded = []
    def spy(*args, **kwargs):
        loaded.append(load_flux_pipeline(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(flux, "load_flux_pipeline", spy)
    report = generate(str(package), [corpus / "audio"], tmp_path / "a",
                      _settings(tmp_path, compare_text=True, seed=5, batch_size=4))
    assert loaded[0].text_encoder is None and loaded[0].text_encoder_2 is None
    wavs = sorted((corpus / "audio").glob("*.wav"))
    names = {p.name for p in (tmp_path / "a").iterdir()}
    assert names == ({f"{w.stem}.png" for w in wavs} | {f"{w.stem}.text.png" for w in wavs}
                     | {"gallery.png", "gallery.md", "generate.json"})
    on_disk = json.loads((tmp_path / "a" / "generate.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert report["seeds"] == list(range(5, 5 + len(wavs)))
    assert report["settings"]["steps"] == 2 and report["pipeline"] == TINY_FLUX
    first = report["clips"][0]
    assert first["label"] == "dog" and first["target_class"] == "dog"
    assert first["target_from"] == "label"
    rooster = next(c for c in report["clips"] if c["label"] == "rooster")
    assert rooster["target_from"] == "nearest"  # the adapters have no rooster class
    assert rooster["target_class"] == rooster["nearest_class"]
    assert rooster["cosine"] == pytest.approx(rooster["nearest_cosine"], abs=1e-5)
    assert report["totals"]["images"] == len(wavs) and report["totals"]["seconds_per_image"] > 0
    assert report["scores"] is None
    md = (tmp_path / "a" / "gallery.md").read_text()
    assert "1-000000-A-0.png" in md and "1-000000-A-0.text.png" in md and "nearest:" in md
    # The same seed, alone in a batch of one: the same PNG bytes.
    generate(str(package), [wavs[0]], tmp_path / "b", _settings(tmp_path, seed=5,
                                                                batch_size=1))
    assert ((tmp_path / "a" / f"{wavs[0].stem}.png").read_bytes()
            == (tmp_path / "b" / f"{wavs[0].stem}.png").read_bytes())
    # Different clips: different conditioning, different images.
    images = [(tmp_path / "a" / f"{w.stem}.png").read_bytes() for w in wavs]
    assert len(set(images)) == len(images)


def test_generate_scores_images_zero_shot(package, corpus, tmp_path):
    scorer = write_tiny_clip(tmp_path / "scorer", ["dog", "siren", "drum"])
    report = generate(str(package), [corpus / "audio"], tmp_path / "out",
                      _settings(tmp_path, compare_text=True, score_with=str(scorer)))
    scores = report["scores"]
    assert set(scores) == {"scorer", "audio", "text", "truth"}
    for kind in ("audio", "text"):
        assert 0 <= scores[kind]["accuracy"] <= 1
        assert set(scores[kind]["predicted"]) <= {"dog", "siren", "drum"}
        assert len(scores[kind]["predicted"]) == 6
    assert "macro_f1" in (tmp_path / "out" / "gallery.md").read_text().replace(" ", "_").lower()


def _narrow_package(package: Path, out: Path, d_t5: int) -> Path:
    """The package with a T5 adapter `d_t5` wide (targets cut to that width)."""
    pkg = FedA2VAdapters.from_pretrained(package)
    config = json.loads(json.dumps(pkg.config))
    config["dims"]["d_t5"] = d_t5
    tensors = {**pkg.targets.tensors, "t5": pkg.targets.tensors["t5"][..., :d_t5].contiguous()}
    targets = Targets(pkg.targets.names, pkg.targets.prompts, tensors)
    adapters = build_adapters(config["dims"]["d_audio"], config["dims"]["d_clip"], d_t5,
                              FedA2VConfig(adapter_hidden_dim=32), target_rows=len(targets.names))
    return FedA2VAdapters.from_state(config, adapters_state(adapters), targets) \
        .save_pretrained(out)


def test_cli_width_mismatch_and_missing_pipeline_are_config_errors(package, corpus, tmp_path,
                                                                   capsys):
    narrow = _narrow_package(package, tmp_path / "narrow", 48)
    wav = str(sorted((corpus / "audio").glob("*.wav"))[0])
    common = ["--audio", wav, "--cache-dir", str(tmp_path / "cache"), "--size", "32"]
    code = main(["generate", str(narrow), *common, "--out", str(tmp_path / "o"),
                 "--pipeline", TINY_FLUX])
    assert code == EXIT_CONFIG
    assert "48 != 64" in capsys.readouterr().err
    code = main(["generate", str(package), *common, "--out", str(tmp_path / "o"),
                 "--pipeline", TINY_FLUX, "--batch-size", "0"])
    assert code == EXIT_CONFIG
    assert "batch-size must be at least 1, got 0" in capsys.readouterr().err
    code = main(["generate", str(package), *common, "--out", str(tmp_path / "o")])
    assert code == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "builtin:tiny-t5" in err and "--pipeline" in err


def test_cli_embed_writes_the_conditioning_of_each_clip(package, corpus, tmp_path, capsys):
    out = tmp_path / "cond.safetensors"
    assert main(["embed", str(package), "--audio", str(corpus / "audio"), "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "prompt_embeds (6, 17, 64)" in capsys.readouterr().out
    with safe_open(str(out), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    assert tensors["prompt_embeds"].shape == (6, 17, BUILTIN_T5_WIDTH)
    assert tensors["pooled_prompt_embeds"].shape == (6, BUILTIN_CLIP_WIDTH)
    clips = json.loads(meta["clips"])
    assert [Path(c).name for c in clips] == sorted(p.name for p in (corpus / "audio").iterdir())
    assert len(json.loads(meta["nearest_classes"])) == 6
    assert json.loads(meta["labels"])[0] == "dog"  # the ESC-50 meta/esc50.csv above audio/
    # Different clips, different conditioning; the same clip, the adapters' own output.
    assert not torch.equal(tensors["prompt_embeds"][0], tensors["prompt_embeds"][1])
    adapters = FedA2VAdapters.from_pretrained(package)
    _, tokens, _ = encode_clips(adapters, [Path(clips[0])], str(tmp_path / "cache"))
    direct = adapters.conditioning(tokens[0][None])
    # float32 sums differ with the batch size: the same output up to rounding
    assert torch.allclose(direct["pooled_prompt_embeds"][0], tensors["pooled_prompt_embeds"][0],
                          atol=1e-5)


@pytest.mark.slow
def test_a_flux_folder_is_the_target_source_and_the_pipeline(flux_dir, tmp_path, capsys):
    """Training reads its CLIP and T5 targets from the FLUX folder's text encoders; the run's
    adapters then draw with that folder's pipeline (its default: where T5 came from)."""
    experiment = experiment_dict(
        tmp_path, "fluxdir", output_dir=tmp_path / "runs",
        federation={"global_rounds": 1, "num_clients": 2, "min_clients": 2},
        dataset={"clips_per_class": 6},
        feda2v={"clip_model_name": str(flux_dir), "clip_model_subfolder": "text_encoder",
                "t5_model_name": str(flux_dir), "t5_model_subfolder": "text_encoder_2"})
    experiment["experiment"]["cache_dir"] = str(tmp_path / "cache")
    run_dir = run_in_process(experiment, tmp_path / "fluxdir.json", LoopbackGrid(2))
    adapters = FedA2VAdapters.from_pretrained(run_dir)
    assert adapters.t5_source == str(flux_dir)
    # The targets are the folder's text encoders' (here: the built-in ones, saved).
    prompts = adapters.prompts
    assert torch.allclose(adapters.targets.tensors["clip"],
                          clip_targets("builtin:tiny-clip", prompts), atol=1e-5)
    assert torch.allclose(adapters.targets.tensors["t5"],
                          t5_targets("builtin:tiny-t5", prompts, 17), atol=1e-5)
    audio = tmp_path / "server-data" / "audio"
    for pipeline in ([], ["--pipeline", str(flux_dir)]):
        out = tmp_path / f"gallery{len(pipeline)}"
        assert main(["generate", str(run_dir), "--audio", str(audio), "--out", str(out),
                     "--steps", "2", "--size", "32", "--cache-dir", str(tmp_path / "cache"),
                     *pipeline]) == 0
        report = json.loads((out / "generate.json").read_text())
        assert report["pipeline"] == str(flux_dir) and report["totals"]["images"] == 18
    assert "18 images" in capsys.readouterr().out
    assert (tmp_path / "gallery0" / "1-000000-A-0.png").read_bytes() \
        == (tmp_path / "gallery2" / "1-000000-A-0.png").read_bytes()
