"""`fed-a2v generate --generators`: images from the nodes' saved generators, merged per class,
through the same rendering, gallery and report as images from audio clips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_pretrained import fresh_package

from fed_a2v.cli import EXIT_CONFIG, main
from fed_a2v.generate.flux import TINY_FLUX
from fed_a2v.generate.from_generators import (
    load_parts,
    merge_parts,
    sample_inputs,
)
from fed_a2v.model.generators import fit_generators, merge_generators, save_checkpoints

T = 6  # tokens per generated sequence: any length drives the adapters


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """A flux adapters package on the built-in encoders (classes dog, siren, drum)."""
    root = tmp_path_factory.mktemp("package")
    return fresh_package(root).save_pretrained(root / "pkg")


def _d_audio(package: Path) -> int:
    return json.loads((package / "config.json").read_text())["dims"]["d_audio"]


def _fit(classes: list[str], width: int, seed: int, per_class: int = 4) -> dict:
    g = torch.Generator().manual_seed(seed)
    labels = [c for c in classes for _ in range(per_class)]
    return fit_generators(torch.randn(len(labels), T, width, generator=g), labels, rank=2)


@pytest.fixture(scope="module")
def generators(package, tmp_path_factory) -> Path:
    """Node 0: dog and siren (round 2; its round 1 had a cat, superseded); node 1: siren and
    owl, a class the adapters do not know."""
    folder = tmp_path_factory.mktemp("generators")
    width = _d_audio(package)
    save_checkpoints(_fit(["cat"], width, 0), folder, "generator", 0, "per_class", 1)
    save_checkpoints(_fit(["dog", "siren"], width, 1), folder, "generator", 0, "per_class", 2)
    save_checkpoints(_fit(["siren", "owl"], width, 2, per_class=3), folder, "generator", 1,
                     "per_class", 1)
    return folder


def _generate(package: Path, folder: Path, out: Path, *extra: str) -> int:
    return main(["generate", str(package), "--generators", str(folder), "--out", str(out),
                 "--pipeline", TINY_FLUX, "--steps", "2", "--size", "32", *extra])


def test_each_class_merged_over_its_nodes_and_drawn_with_its_seed(package, generators):
    parts = load_parts(generators, "generator", _d_audio(package))
    assert {c: [p.node for p in ps] for c, ps in parts.items()} == {
        "dog": [0], "siren": [0, 1], "owl": [1]}  # node 0's latest round only: no cat
    merged = merge_parts(parts)
    assert list(merged) == ["dog", "owl", "siren"]
    assert merged["siren"].count == 4 + 3
    siren = merge_generators([p.generator for p in parts["siren"]], 2)
    inputs = sample_inputs(merged, 2, seed=7)
    assert inputs.labels == ["dog", "dog", "owl", "owl", "siren", "siren"]
    assert inputs.files[4:] == ["generator:siren#0", "generator:siren#1"]
    assert inputs.stems == ["dog-0", "dog-1", "owl-0", "owl-1", "siren-0", "siren-1"]
    expected = siren.sample(2, torch.Generator().manual_seed(7 + 2))  # siren: class index 2
    assert torch.allclose(torch.stack(inputs.tokens[4:]), expected)


def test_cli_renders_per_class_images_same_seed_same_bytes(package, generators, tmp_path,
                                                           capsys):
    assert _generate(package, generators, tmp_path / "a", "--seed", "3") == 0
    assert "6 images" in capsys.readouterr().out
    stems = [f"{c}-{i}" for c in ("dog", "owl", "siren") for i in range(2)]
    assert {p.name for p in (tmp_path / "a").iterdir()} == (
        {f"{s}.png" for s in stems} | {"gallery.png", "gallery.md", "generate.json"})
    report = json.loads((tmp_path / "a" / "generate.json").read_text())
    clips = report["clips"]
    assert [c["file"] for c in clips] == [f"generator:{c}#{i}" for c in ("dog", "owl", "siren")
                                          for i in range(2)]
    assert [c["label"] for c in clips] == ["dog", "dog", "owl", "owl", "siren", "siren"]
    assert report["seeds"] == list(range(3, 9)) and report["skipped"] == []
    dog, owl = clips[0], clips[2]
    assert (dog["target_class"], dog["target_from"]) == ("dog", "label")
    # owl: rendered all the same, compared with the class nearest its conditioning
    assert owl["target_from"] == "nearest" and owl["target_class"] == owl["nearest_class"]
    classes = report["generators"]["classes"]
    assert classes["siren"]["nodes"] == [0, 1] and classes["siren"]["clips"] == 7
    assert classes["owl"]["known"] is False and classes["dog"]["known"] is True
    assert report["generators"]["per_class"] == 2 and report["totals"]["images"] == 6
    assert "generator:dog#0" in (tmp_path / "a" / "gallery.md").read_text()
    images = [(tmp_path / "a" / f"{s}.png").read_bytes() for s in stems]
    assert len(set(images)) == len(images)
    # The same seed again, one image per call this time: the same bytes.
    assert _generate(package, generators, tmp_path / "b", "--seed", "3", "--batch-size",
                     "1") == 0
    assert images == [(tmp_path / "b" / f"{s}.png").read_bytes() for s in stems]


def test_low_memory_is_bf16_one_image_per_call(package, generators, tmp_path):
    assert _generate(package, generators, tmp_path / "o", "--per-class", "1",
                     "--low-memory") == 0
    report = json.loads((tmp_path / "o" / "generate.json").read_text())
    assert (report["settings"]["dtype"], report["settings"]["batch_size"]) == ("bf16", 1)
    assert report["totals"]["images"] == 3


def test_a_folder_without_generator_files_names_it_and_the_pattern(package, generators,
                                                                   tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _generate(package, empty, tmp_path / "o") == EXIT_CONFIG
    err = capsys.readouterr().err
    assert str(empty) in err and "generator_node<id>_class_<c>_round_<r>.pt" in err
    # The files are there, under another prefix than the one asked for.
    assert _generate(package, generators, tmp_path / "o", "--generator-base", "vae") \
        == EXIT_CONFIG
    assert "vae_node<id>_class_<c>_round_<r>.pt" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_generator_of_another_width_is_named(package, tmp_path, capsys):
    folder = tmp_path / "wide"
    save_checkpoints(_fit(["dog"], _d_audio(package), 1), folder, "generator", 0,
                     "per_class", 1)
    save_checkpoints(_fit(["siren"], _d_audio(package) + 8, 1), folder, "generator", 1,
                     "per_class", 1)
    assert _generate(package, folder, tmp_path / "o") == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "generator_node1_class_siren_round_1.pt (class siren)" in err
    assert f"{_d_audio(package) + 8} wide" in err


def test_exactly_one_of_audio_and_generators(package, generators, tmp_path, capsys):
    out = ["--out", str(tmp_path / "o"), "--pipeline", TINY_FLUX]
    with pytest.raises(SystemExit) as neither:
        main(["generate", str(package), *out])
    assert neither.value.code == 2
    assert "one of the arguments --audio --generators is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as both:
        main(["generate", str(package), "--generators", str(generators), "--audio", "x.wav",
              *out])
    assert both.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["generate", str(package), "--audio", "x.wav", "--per-class", "3",
                 *out]) == EXIT_CONFIG
    assert "go with --generators" in capsys.readouterr().err
