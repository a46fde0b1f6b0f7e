"""`fed-a2v new`: a first experiment file from a corpus on disk (a CSV manifest, an ESC-50 folder,
class folders), read back through the normal loader; the class-folders layout; fold keys that do
not apply are named; and, slow, from a folder of audio to a finished run in two commands."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile

from fed_a2v.cli import main
from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.load import load_config
from fed_a2v.config.schema import Config, NodeConfig
from fed_a2v.data.builtin.layouts import write_layout
from fed_a2v.data.corpora import read_folders, read_manifest
from fed_a2v.data.first_experiment import (
    dumps,
    experiment_name,
    find_corpus,
    write_first_experiment,
)
from fed_a2v.data.node_corpora import check_node_shares, node_corpus
from fed_a2v.data.splits import split_for_node

CLASSES = ["dog", "rain", "siren"]
RATES = (16000, 44100)

QUICKSTART = json.loads((Path(__file__).parents[1] / "configs" / "quickstart.json").read_text())


def write_clip(path: Path, label: int, index: int, seconds: float = 0.3) -> Path:
    """A short clip of its own (a class's tone over seeded noise), at 16 or 44.1 kHz in turn."""
    rate = RATES[index % 2]
    t = np.arange(int(rate * seconds)) / rate
    noise = np.random.default_rng(1000 * label + index).normal(0.0, 0.05, t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, 0.3 * np.sin(2 * np.pi * (300 + 250 * label) * t) + noise, rate)
    return path


def manifest_folder(root: Path, per_class: int = 10, classes: list[str] = CLASSES,
                    extra: dict[str, list] | None = None, name: str = "manifest.csv") -> Path:
    """`root/<name>` listing `audio/<class>_<i>.wav`; `extra` adds columns, one value a row."""
    rows = [{"path": f"audio/{label}_{i}.wav", "label": label}
            for k, label in enumerate(classes) for i in range(per_class)]
    for k, label in enumerate(classes):
        for i in range(per_class):
            write_clip(root / "audio" / f"{label}_{i}.wav", k, i)
    for column, values in (extra or {}).items():
        for row, value in zip(rows, values, strict=True):
            row[column] = value
    with open(root / name, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def esc50_folder(root: Path, per_class: int = 10) -> Path:
    """ESC-50's layout: `meta/esc50.csv` and `audio/`, clips dealt into folds 1-5."""
    lines = ["filename,fold,target,category"]
    for k, label in enumerate(CLASSES):
        for i in range(per_class):
            name = f"{i % 5 + 1}-{k:03d}{i:03d}-A-{k}.wav"
            write_clip(root / "audio" / name, k, i)
            lines.append(f"{name},{i % 5 + 1},{k},{label}")
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "esc50.csv").write_text("\n".join(lines) + "\n")
    return root


def class_folders(root: Path, per_class: int = 10) -> Path:
    """`root/<class>/*.wav` and `*.flac`, with files that are not clips beside them."""
    for k, label in enumerate(CLASSES):
        for i in range(per_class):
            write_clip(root / label / f"take{i}.{'flac' if i % 3 == 0 else 'wav'}", k, i)
        (root / label / "notes.txt").write_text("not audio")
        (root / label / f".hidden{k}.wav").write_bytes(b"not a clip")
    (root / "empty").mkdir()
    return root


def new(tmp_path: Path, corpus: Path, *args: str, capsys=None) -> dict:
    """`fed-a2v new CORPUS --out tmp_path/x.json ARGS`: the file it wrote."""
    out = tmp_path / "x.json"
    assert main(["new", str(corpus), "--out", str(out), *args]) == 0
    return json.loads(out.read_text())


def test_manifest_folder_without_folds(tmp_path: Path, capsys) -> None:
    corpus = manifest_folder(tmp_path / "My Sounds!")
    data = new(tmp_path, corpus)
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'x.json'}" in out
    assert f"fed-a2v validate {tmp_path / 'x.json'}" in out
    assert f"fed-a2v simulate --config {tmp_path / 'x.json'}" in out
    assert "MIT/ast-finetuned-audioset-10-10-0.4593" in out  # how to switch to real models
    assert "16000 Hz, 44100 Hz" in out

    assert data["experiment"]["name"] == "my-sounds"
    assert data["dataset"]["name"] == "csv"
    assert data["dataset"]["path"] == str((corpus / "manifest.csv").resolve())
    # No folds in the corpus: ratios, said so, and no fold list that would not apply.
    assert data["dataset"]["use_folds"] is False
    assert {k: data["dataset"][k] for k in ("train_ratio", "val_ratio", "test_ratio")} == {
        "train_ratio": 0.8, "val_ratio": 0.0, "test_ratio": 0.2}
    assert not {"train_folds", "test_folds", "val_folds"} & set(data["dataset"])
    # Built-in-corpus-only keys are left out of a real corpus's file.
    assert not {"num_classes", "clips_per_class", "sample_rate"} & set(data["dataset"])
    assert data["dataset"]["clip_seconds"] == 0.3
    assert data["nodes"] == {str(i): {"selected_classes": CLASSES} for i in range(3)}
    assert data["federation"]["global_rounds"] == 2 and data["federation"]["local_epochs"] == 2
    # The quickstart's models and settings, as configs/quickstart.json has them.
    assert data["feda2v"] == QUICKSTART["feda2v"] and data["training"] == QUICKSTART["training"]

    # The normal loader, as `simulate` reads it (an unknown key would be an error); every
    # node trains on its own clips of every class and holds some out.
    config = load_config(tmp_path / "x.json")
    assert config.federation.num_clients == 3 and config.federation.min_clients == 3
    assert config.dataset.partition == "nodes"
    shares = check_node_shares(config, {f"node {i}": (config.node(i), i, 3) for i in range(3)},
                               "x.json")
    assert len(shares) == 3
    corpus_read = node_corpus(config, config.node(0))
    assert corpus_read.classes == CLASSES and corpus_read.dealt_folds
    for i in range(3):
        split = split_for_node(corpus_read, config.node(i), i, 3, config)
        assert {c.label for c in split.train} == set(CLASSES) and split.test
    assert main(["validate", str(tmp_path / "x.json")]) == 0


def test_manifest_with_a_fold_column_uses_its_folds(tmp_path: Path) -> None:
    folds = [i % 4 + 1 for _ in CLASSES for i in range(8)]
    data = new(tmp_path, manifest_folder(tmp_path / "folded", 8, extra={"fold": folds}))
    assert {k: data["dataset"][k] for k in ("use_folds", "train_folds", "test_folds")} == {
        "use_folds": True, "train_folds": [1, 2, 3], "test_folds": [4]}
    assert not {"train_ratio", "val_ratio", "test_ratio"} & set(data["dataset"])
    config = load_config(tmp_path / "x.json")
    corpus = node_corpus(config, config.node(0))
    split = split_for_node(corpus, config.node(0), 0, 3, config)
    assert {c.fold for c in split.test} == {4} and {c.fold for c in split.train} <= {1, 2, 3}


def test_manifest_with_a_split_column_keeps_it(tmp_path: Path) -> None:
    splits = ["test" if i % 5 == 0 else "train" for _ in CLASSES for i in range(10)]
    corpus = manifest_folder(tmp_path / "split", extra={"split": splits}, name="clips.csv")
    data = new(tmp_path, corpus)
    assert data["dataset"]["path"] == str((corpus / "clips.csv").resolve())
    # The split column decides: no fold or ratio key, which could not apply.
    assert not {"use_folds", "train_folds", "test_folds", "train_ratio", "test_ratio"} & set(
        data["dataset"])
    config = load_config(tmp_path / "x.json")
    corpus_read = node_corpus(config, config.node(1))
    split = split_for_node(corpus_read, config.node(1), 1, 3, config)
    assert {c.split for c in split.test} == {"test"} and {c.split for c in split.train} == {
        "train"}


def test_esc50_folder_and_classes_split(tmp_path: Path, capsys) -> None:
    corpus = esc50_folder(tmp_path / "ESC-50-master")
    data = new(tmp_path, corpus, "--split", "classes", "--nodes", "2", "--rounds", "3")
    assert "ESC-50 folder" in capsys.readouterr().out
    assert data["experiment"]["name"] == "esc-50-master"
    assert data["dataset"]["name"] == "esc50" and data["dataset"]["path"] == str(corpus.resolve())
    assert (data["dataset"]["train_folds"], data["dataset"]["test_folds"]) == ([1, 2, 3, 4], [5])
    assert data["dataset"]["partition"] == "classes"
    assert data["federation"]["global_rounds"] == 3 and data["federation"]["num_clients"] == 2
    # Dealt round-robin in the corpus's order: each node its own, every class on one node.
    assert data["nodes"] == {"0": {"selected_classes": ["dog", "siren"]},
                             "1": {"selected_classes": ["rain"]}}
    config = load_config(tmp_path / "x.json")
    corpus_read = node_corpus(config, config.node(0))
    held = {i: split_for_node(corpus_read, config.node(i), i, 2, config) for i in range(2)}
    # Partition "classes": a node holds every clip of its classes, folds 1-4 train, 5 test.
    assert Counter(c.label for c in held[0].train) == {"dog": 8, "siren": 8}
    assert {c.fold for c in held[1].test} == {5} and len(held[1].test) == 2


def test_class_folders(tmp_path: Path, capsys) -> None:
    corpus = class_folders(tmp_path / "field_recordings")
    data = new(tmp_path, corpus, "--nodes", "2", "--name", "First Try")
    assert "class folders" in capsys.readouterr().out
    assert data["experiment"]["name"] == "first-try"
    assert data["dataset"]["name"] == "folders"
    assert data["dataset"]["use_folds"] is False  # no folds of its own: ratios
    config = load_config(tmp_path / "x.json")
    read = node_corpus(config, config.node(0))
    assert read.classes == CLASSES and len(read.clips) == 30  # no .txt, hidden file or empty
    assert Counter(c.path.suffix for c in read.clips) == {".wav": 18, ".flac": 12}
    assert main(["validate", str(tmp_path / "x.json")]) == 0


def test_class_folders_get_seeded_folds_like_a_manifest_without_them(tmp_path: Path) -> None:
    corpus = read_folders(class_folders(tmp_path / "c"), seed=4)
    assert corpus.dealt_folds
    assert Counter((c.label, c.fold) for c in corpus.clips) == {
        (label, fold): 2 for label in CLASSES for fold in range(1, 6)}
    assert read_folders(tmp_path / "c", seed=4) == corpus
    assert read_folders(tmp_path / "c", seed=5) != corpus
    # The same clips listed by a manifest without a fold column get the same folds.
    lines = ["path,label"] + [f"{c.path},{c.label}" for c in corpus.clips]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    assert read_manifest(tmp_path / "m.csv", seed=4).clips == corpus.clips


def test_the_quickstarts_folds_apply_to_a_manifest_without_them(tmp_path: Path) -> None:
    """A copy of configs/quickstart.json on a fold-less manifest: its train_folds / test_folds
    cut the dealt folds, 4 of 5 for training, the fifth held out."""
    manifest_folder(tmp_path / "m")
    config = Config()
    config.dataset.name, config.dataset.path = "csv", str(tmp_path / "m")
    corpus = node_corpus(config, NodeConfig())
    split = split_for_node(corpus, NodeConfig(), 0, 1, config)
    assert (len(split.train), len(split.val), len(split.test)) == (24, 0, 6)
    assert {c.fold for c in split.test} == {5}


@pytest.fixture
def warnings_seen(caplog: pytest.LogCaptureFixture, monkeypatch) -> pytest.LogCaptureFixture:
    """The fed_a2v logger's warnings (the CLI's setup stops them propagating)."""
    monkeypatch.setattr(logging.getLogger("fed_a2v"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="fed_a2v")
    return caplog


def test_corpus_folds_in_no_fold_list_are_named(tmp_path: Path, warnings_seen) -> None:
    folds = [i % 6 + 1 for _ in CLASSES for i in range(12)]
    manifest_folder(tmp_path / "m", 12, extra={"fold": folds})
    config = Config()
    config.dataset.name, config.dataset.path = "csv", str(tmp_path / "m")
    corpus = node_corpus(config, NodeConfig())
    split = split_for_node(corpus, NodeConfig(), 0, 1, config, "exp.json: 'nodes.0'")
    assert {c.fold for c in split.train + split.test} == {1, 2, 3, 4, 5}
    assert "exp.json: 'nodes.0': the corpus's fold(s) 6 are in none of 'train_folds', " \
           "'val_folds' and 'test_folds'" in warnings_seen.text
    warnings_seen.clear()
    split_for_node(corpus, NodeConfig(use_folds=[1, 2, 5]), 0, 1, config)  # chosen: no warning
    config.dataset.train_folds = [1, 2, 3, 4, 6]
    split_for_node(corpus, NodeConfig(), 0, 1, config)
    assert not warnings_seen.text


def test_fold_keys_on_a_split_column_are_named(tmp_path: Path, warnings_seen) -> None:
    splits = ["test" if i % 5 == 0 else "train" for _ in CLASSES for i in range(10)]
    manifest_folder(tmp_path / "m", extra={"split": splits})
    config = Config()
    config.dataset.name, config.dataset.path = "csv", str(tmp_path / "m")
    corpus = node_corpus(config, NodeConfig())
    split_for_node(corpus, NodeConfig(), 0, 1, config)
    assert not warnings_seen.text  # the defaults, never set
    config.dataset.train_folds = [1, 2]
    split = split_for_node(corpus, NodeConfig(test_folds=[3]), 0, 1, config, "n")
    assert len(split.train) == 24 and len(split.test) == 6
    assert "n: 'test_folds', 'dataset.train_folds' do not apply: every clip's split" \
        in warnings_seen.text


def test_builtin_layout_with_default_folds_warns_of_nothing(tmp_path: Path,
                                                           warnings_seen) -> None:
    root = write_layout(tmp_path / "esc", "esc50", ["dog", "rooster"], 10, clip_seconds=0.05,
                        sample_rate=8000)
    config = Config()
    config.dataset.name, config.dataset.path = "esc50", str(root)
    split = split_for_node(node_corpus(config, NodeConfig()), NodeConfig(), 0, 1, config)
    assert (len(split.train), len(split.test)) == (16, 4) and not warnings_seen.text


@pytest.mark.parametrize("layout,kind", [("vegas", "vegas"), ("vggsound", "vggsound")])
def test_upstream_layouts_are_found_too(tmp_path: Path, layout: str, kind: str) -> None:
    root = write_layout(tmp_path / layout, layout, ["dog", "drum"], 6, clip_seconds=0.05,
                        sample_rate=8000)
    assert find_corpus(root).kind == kind
    data = new(tmp_path, root, "--nodes", "2")
    assert data["dataset"]["name"] == kind
    load_config(tmp_path / "x.json")


def test_an_existing_file_needs_force(tmp_path: Path, capsys) -> None:
    corpus = manifest_folder(tmp_path / "m")
    out = tmp_path / "x.json"
    out.write_text("{}")
    assert main(["new", str(corpus), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--force" in err
    assert out.read_text() == "{}"
    assert main(["new", str(corpus), "--out", str(out), "--force", "--rounds", "4"]) == 0
    assert json.loads(out.read_text())["federation"]["global_rounds"] == 4


def test_default_out_is_the_name_here(tmp_path: Path, monkeypatch) -> None:
    corpus = manifest_folder(tmp_path / "birds")
    monkeypatch.chdir(tmp_path)
    assert main(["new", str(corpus)]) == 0
    assert load_config(tmp_path / "birds.json").experiment.name == "birds"


def test_a_bad_corpus_path_exits_2_and_says_why(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    done = subprocess.run([sys.executable, "-m", "fed_a2v.cli", "new", str(missing), "--out",
                           str(tmp_path / "x.json")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert f"error: {missing.resolve()}: no such file or folder" in done.stderr
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("make,args,message", [
    (lambda root: (root / "notes.txt").write_text("x"), (), "no corpus found"),
    (lambda root: [manifest_folder(root, 5, name=n) for n in ("a.csv", "b.csv")], (),
     "holds 2 CSV manifests (a.csv, b.csv): pass the one to use"),
    (lambda root: manifest_folder(root, 5, classes=["dog"]), (), "one class only (dog)"),
    (lambda root: manifest_folder(root, 5), ("--nodes", "4", "--split", "classes"),
     "3 classes over 4 nodes"),
    (lambda root: manifest_folder(root, 5), ("--nodes", "0"), "--nodes must be at least 1"),
])
def test_corpora_that_cannot_start_an_experiment(tmp_path: Path, capsys, make, args,
                                                 message) -> None:
    root = tmp_path / "data"
    root.mkdir()
    make(root)
    assert main(["new", str(root), "--out", str(tmp_path / "x.json"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_nodes_too_small_to_train_are_refused(tmp_path: Path) -> None:
    corpus = manifest_folder(tmp_path / "m", 2)  # 6 clips cannot train 8 nodes
    with pytest.raises(ConfigError, match="no training clip") as err:
        write_first_experiment(corpus, tmp_path / "x.json", QUICKSTART, num_nodes=8)
    assert "nothing written" in str(err.value) and not (tmp_path / "x.json").exists()


def test_names_and_json_layout() -> None:
    assert experiment_name("ESC-50-master") == "esc-50-master"
    assert experiment_name("  Bird songs (2024) ") == "bird-songs-2024"
    assert experiment_name("???") == "experiment"
    data = {"a": {"b": [1, 2], "c": [{"d": "x"}]}, "e": {}}
    assert json.loads(dumps(data)) == data
    assert '"b": [1, 2]' in dumps(data)


@pytest.mark.slow
def test_from_a_folder_of_audio_to_a_finished_run_in_two_commands(tmp_path: Path) -> None:
    corpus = manifest_folder(tmp_path / "my_clips", 10)
    broken = corpus / "audio" / "rain_3.wav"
    broken.write_bytes(b"not audio")  # listed and present, but undecodable: skipped, and said
    cli = [sys.executable, "-m", "fed_a2v.cli"]
    made = subprocess.run([*cli, "new", str(corpus), "--out", "x.json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    assert "fed-a2v simulate --config x.json" in made.stdout
    done = subprocess.run([*cli, "simulate", "--config", "x.json", "--output-dir",
                           str(tmp_path / "runs")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-5000:]
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    assert run_dir.parent == tmp_path / "runs" and run_dir.name.startswith("my_clips-")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [1, 2]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["num_nodes"] == 3
    assert summary["skipped_clips"] == 1
    # The end of the run says so on the console, not only in a node's log.
    assert "warning: 1 clip(s) could not be read and were skipped: " in done.stderr
    assert str(broken) in done.stderr.split("could not be read")[-1]
    assert (run_dir / "final" / "model.safetensors").exists()
