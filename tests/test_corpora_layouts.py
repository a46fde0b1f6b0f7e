"""Each corpus layout read from real files (classes, clips, folds, splits, captions), and mixed
federations: each node reads its own kind and folder, the server indexes the union of classes."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.schema import Config, NodeConfig
from fed_a2v.config.validate import config_from_dict
from fed_a2v.data.builtin.layouts import write_layout
from fed_a2v.data.corpora import VEGAS_CLASSES, read_esc50, read_vegas, read_vggsound
from fed_a2v.data.node_corpora import check_node_shares, corpus_index, node_corpus
from fed_a2v.data.splits import split_for_node
from fed_a2v.model.pretrained import FedA2VAdapters

TINY = {"clip_seconds": 0.05, "sample_rate": 8000}


def _write(root: Path, layout: str, classes: list[str], per_class: int, **kw) -> Path:
    return write_layout(root, layout, classes, per_class, **(TINY | kw))


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory) -> Path:
    """Upstream's folder names under one `dataset.path`: ESC-50 (upstream layout) and VEGAS."""
    root = tmp_path_factory.mktemp("mixed")
    _write(root / "esc50-v2.0.0-full", "esc50-upstream", ["siren", "dog", "rooster"], 10)
    # Another seed: the generator's first clips would otherwise be byte-identical files.
    _write(root / "VEGAS", "vegas", ["dog", "drum", "printer"], 6, seed=1)
    return root


# ---------------------------------------------------------------------------------------------
# ESC-50, upstream's layout


def test_esc50_upstream_layout(tmp_path: Path) -> None:
    root = _write(tmp_path / "esc", "esc50-upstream", ["siren", "dog", "rooster"], 10,
                  captions=True)
    labels = json.loads((root / "class_labels.json").read_text())
    assert labels == {"siren": 0, "dog": 1, "rooster": 2}
    assert sorted(p.name for p in root.glob("fold*.json")) == [f"fold0{k}.json" for k in range(5)]
    corpus = read_esc50(root)
    assert corpus.classes == ["siren", "dog", "rooster"]  # class_labels.json's order
    assert len(corpus.clips) == 30
    # fold0K.json lists audio/fold0K/ and is ESC-50's fold K+1: two clips per class per fold.
    assert Counter((c.label, c.fold) for c in corpus.clips) == {
        (label, fold): 2 for label in corpus.classes for fold in range(1, 6)}
    assert all(c.path.parent.name == f"fold0{c.fold - 1}" for c in corpus.clips)
    assert corpus.has_captions
    first = next(c for c in corpus.clips if c.path.name == "1-000000-A-0.wav")
    assert first.caption == "siren sound, take 0" and first.split is None


def test_esc50_upstream_layout_matches_the_official_one(tmp_path: Path) -> None:
    """The same generated clips in both layouts read as the same classes, folds and audio."""
    classes = ["dog", "rooster"]
    official = read_esc50(_write(tmp_path / "official", "esc50", classes, 5))
    upstream = read_esc50(_write(tmp_path / "upstream", "esc50-upstream", classes, 5))
    assert official.classes == upstream.classes == classes
    assert not official.has_captions

    def by_name(corpus):
        return {c.path.name: (c.label, c.fold, c.path.read_bytes()) for c in corpus.clips}

    assert by_name(official) == by_name(upstream)


def test_esc50_upstream_fold_numbers_in_splits(tmp_path: Path) -> None:
    """train_folds [1, 2, 3, 4] (native numbering) are upstream's fold00..fold03."""
    corpus = read_esc50(_write(tmp_path / "esc", "esc50-upstream", ["dog", "rooster"], 10))
    split = split_for_node(corpus, NodeConfig(), 0, 1, Config())
    assert {c.path.parent.name for c in split.train} == {"fold00", "fold01", "fold02", "fold03"}
    assert {c.path.parent.name for c in split.test} == {"fold04"}
    assert (len(split.train), len(split.val), len(split.test)) == (16, 0, 4)


def test_esc50_upstream_layout_missing_audio_and_bad_entries(tmp_path: Path) -> None:
    root = _write(tmp_path / "esc", "esc50-upstream", ["dog", "rooster"], 5)
    (root / "audio" / "fold00" / "1-000000-A-0.wav").unlink()
    assert len(read_esc50(root).clips) == 9  # left out, as upstream did
    (root / "fold01.json").write_text(json.dumps({"x.wav": ["cat"]}))
    with pytest.raises(ConfigError, match=r"fold01\.json.*'x\.wav'.*class_labels\.json"):
        read_esc50(root)
    shutil.rmtree(root / "audio")
    for path in root.glob("*.json"):
        path.unlink()
    with pytest.raises(ConfigError, match="meta/esc50.csv.*class_labels.json"):
        read_esc50(root)


# ---------------------------------------------------------------------------------------------
# VEGAS


def test_vegas_layout(tmp_path: Path) -> None:
    root = _write(tmp_path / "vegas", "vegas", list(VEGAS_CLASSES), 4)
    corpus = read_vegas(root)
    assert corpus.classes == list(VEGAS_CLASSES)  # upstream's order: the folders, sorted
    assert len(corpus.clips) == 40
    assert Counter(c.label for c in corpus.clips) == dict.fromkeys(VEGAS_CLASSES, 4)
    assert {c.fold for c in corpus.clips} == {0} and {c.split for c in corpus.clips} == {None}
    dog = [c.path.relative_to(root).as_posix() for c in corpus.clips if c.label == "dog"]
    assert dog == [f"dog/audios/video_{i:05d}.wav" for i in range(4)]
    header = (root / "dog" / "video_info.csv").read_text().splitlines()[0]
    assert header == "YTID,start_second,end_second"


def test_vegas_rows_name_the_files_and_the_csv_is_optional(tmp_path: Path) -> None:
    root = _write(tmp_path / "vegas", "vegas", ["dog", "drum"], 3)
    # Two more rows than wavs: video_00003 and video_00004 are not there, so left out.
    with open(root / "dog" / "video_info.csv", "a") as f:
        f.write("extra1,0,10\nextra2,0,10\n")
    (root / "drum" / "video_info.csv").unlink()  # without it: the wavs there
    (root / "drum" / "audios" / "video_00001.wav").unlink()
    corpus = read_vegas(root)
    assert [c.path.name for c in corpus.clips if c.label == "dog"] == [
        "video_00000.wav", "video_00001.wav", "video_00002.wav"]
    assert [c.path.name for c in corpus.clips if c.label == "drum"] == [
        "video_00000.wav", "video_00002.wav"]
    with pytest.raises(ConfigError, match="no VEGAS corpus"):
        read_vegas(tmp_path / "vegas" / "dog" / "audios")


def test_vegas_cannot_be_split_by_folds(tmp_path: Path) -> None:
    corpus = read_vegas(_write(tmp_path / "vegas", "vegas", ["dog", "drum"], 10))
    with pytest.raises(ConfigError, match=r"exp.json: 'nodes.3'.*no folds.*'use_folds'"):
        split_for_node(corpus, NodeConfig(use_folds=True), 3, 4, Config(),
                       "exp.json: 'nodes.3'")
    # Unset (the default), a corpus without folds is split by ratios: 0.8 / 0.1 / 0.1.
    for node in (NodeConfig(use_folds=False), NodeConfig()):
        split = split_for_node(corpus, node, 0, 1, Config())
        assert (len(split.train), len(split.val), len(split.test)) == (16, 2, 2)


# ---------------------------------------------------------------------------------------------
# VGGSound


def test_vggsound_layout(tmp_path: Path) -> None:
    root = _write(tmp_path / "vgg", "vggsound", ["dog_barking", "playing_drum_kit"], 10,
                  captions=True)
    rows = (root / "vggsound.csv").read_text().splitlines()
    assert rows[0] == "yt_00-0000,0,dog barking,train"  # no header, labels with spaces
    corpus = read_vggsound(root)
    assert corpus.classes == ["dog_barking", "playing_drum_kit"]
    assert len(corpus.clips) == 20 and {c.fold for c in corpus.clips} == {0}
    # The CSV's split: every fifth clip is a test clip, in test/audios/.
    assert Counter((c.label, c.split) for c in corpus.clips) == {
        ("dog_barking", "train"): 8, ("dog_barking", "test"): 2,
        ("playing_drum_kit", "train"): 8, ("playing_drum_kit", "test"): 2}
    assert all(c.path.parent.parent.name == c.split for c in corpus.clips)
    assert corpus.clips[0].path.name == "yt_00-0000_000000.wav"  # ytid with "_", padded start
    assert corpus.clips[0].caption == "dog barking sound, take 0"
    # Selected as upstream wrote VGGSound's classes: the label, any case, spaces for "_".
    chosen = split_for_node(corpus, NodeConfig(selected_classes=["Dog barking"]), 0, 1, Config())
    assert chosen.classes == ["dog_barking"] and len(chosen.train) == 8
    # Fold splits and ratio splits alike follow the CSV's train/test.
    split = split_for_node(corpus, NodeConfig(), 0, 1, Config())
    assert (len(split.train), len(split.val), len(split.test)) == (16, 0, 4)


def test_vggsound_csv_decides_and_stray_files_are_left_out(tmp_path: Path) -> None:
    root = _write(tmp_path / "vgg", "vggsound", ["Dog Barking"], 5)
    assert read_vggsound(root).classes == ["dog_barking"]  # upstream's normalisation
    text = (root / "vggsound.csv").read_text()
    (root / "vggsound.csv").write_text("# YouTube ID,start seconds,label,split\n" + text)
    moved = root / "test" / "audios" / "yt_00-0000_000000.wav"  # a train clip in test/
    (root / "train" / "audios" / "yt_00-0000_000000.wav").rename(moved)
    shutil.copy(moved, root / "train" / "audios" / "unlisted_000007.wav")
    (root / "train" / "audios" / "yt_00-0001_000010.wav").unlink()
    corpus = read_vggsound(root)
    assert [(c.path.name, c.split) for c in corpus.clips] == [
        ("yt_00-0000_000000.wav", "train"), ("yt_00-0002_000020.wav", "train"),
        ("yt_00-0003_000030.wav", "train"), ("yt_00-0004_000040.wav", "test")]
    (root / "vggsound.csv").write_text(text + "abc,5,dog,dev\n")
    with pytest.raises(ConfigError, match=r"vggsound.csv: line 6: split 'dev'"):
        read_vggsound(root)


# ---------------------------------------------------------------------------------------------
# Mixed federations


def _mixed(root: Path, nodes: dict, **dataset) -> Config:
    return config_from_dict({"dataset": {"name": "mixed", "path": str(root), "use_folds": False,
                                         "partition": "classes", **dataset}, "nodes": nodes})


def test_mixed_federation_reads_each_kind_and_indexes_the_union(mixed_root: Path) -> None:
    config = _mixed(mixed_root, {
        "0": {"dataset": "esc50", "selected_classes": ["siren", "rooster"]},
        "1": {"dataset": "vegas"},
        "2": {"dataset": "esc50", "selected_classes": ["dog"]}})
    index = corpus_index(config)
    # ESC-50's classes (node 0 comes first), then VEGAS's new ones; "dog" is one class.
    assert index.classes == ["siren", "dog", "rooster", "drum", "printer"]
    esc = node_corpus(config, config.nodes["0"])
    vegas = node_corpus(config, config.nodes["1"])
    assert esc.root == mixed_root / "esc50-v2.0.0-full" and len(esc.clips) == 30
    assert vegas.root == mixed_root / "VEGAS" and len(vegas.clips) == 18
    found = check_node_shares(config, {f"n{k}": (v, int(k), 3) for k, v in config.nodes.items()},
                              "exp.json")
    # Whole classes, 0.8 / 0.1 / 0.1 per class: 10 clips -> 8/1/1, 6 clips -> 4/1/1.
    assert found == ["n0: 16 train / 2 val / 2 test clips", "n1: 12 train / 3 val / 3 test clips",
                     "n2: 8 train / 1 val / 1 test clips"]


def test_mixed_paths_and_node_folders(mixed_root: Path, tmp_path: Path) -> None:
    shutil.copytree(mixed_root / "VEGAS", tmp_path / "elsewhere")
    config = _mixed(tmp_path / "nothing-here", {"0": {"dataset": "vegas"}},
                    paths={"vegas": str(tmp_path / "elsewhere")})
    assert node_corpus(config, config.nodes["0"]).root == tmp_path / "elsewhere"
    own = NodeConfig(dataset="esc50", dataset_path=str(mixed_root / "esc50-v2.0.0-full"))
    assert node_corpus(config, own).classes == ["siren", "dog", "rooster"]
    assert corpus_index(config).classes == ["dog", "drum", "printer"]
    with pytest.raises(ConfigError, match=r"exp.json: 'dataset.path'.*no esc50 corpus"):
        check_node_shares(_mixed(tmp_path, {"0": {"dataset": "esc50"}}), {}, "exp.json")


def test_one_kind_in_upstreams_audio_folder(mixed_root: Path) -> None:
    """`dataset.path` may be the corpus itself or upstream's dataset/Audio folder holding it
    under upstream's folder name."""
    for path in (mixed_root, mixed_root / "VEGAS"):
        config = config_from_dict({"dataset": {"name": "vegas", "path": str(path)}})
        assert node_corpus(config, NodeConfig()).root == mixed_root / "VEGAS"


def test_mixed_without_a_node_dataset_is_an_error(mixed_root: Path) -> None:
    config = _mixed(mixed_root, {"0": {"dataset": "vegas"}, "1": {}})
    with pytest.raises(ConfigError, match=r"'nodes.1': 'dataset' is not set.*mixed"):
        corpus_index(config)
    with pytest.raises(ConfigError, match="no 'nodes' entry names"):
        corpus_index(_mixed(mixed_root, {}))
    no_root = config_from_dict({"dataset": {"name": "mixed"}, "nodes": {"0": {"dataset": "csv"}}})
    with pytest.raises(ConfigError, match=r"'dataset.paths.csv'"):
        corpus_index(no_root)


def test_a_node_of_another_kind_beside_the_experiments_corpus(mixed_root: Path) -> None:
    """`dataset.name` esc50 with one VEGAS node: VEGAS is looked for in dataset.path/VEGAS
    unless dataset.paths says where."""
    config = config_from_dict({
        "dataset": {"name": "esc50", "path": str(mixed_root / "esc50-v2.0.0-full"),
                    "paths": {"vegas": str(mixed_root / "VEGAS")}, "partition": "classes"},
        "nodes": {"0": {"selected_classes": ["siren"]},
                  "1": {"dataset": "vegas", "use_folds": False}}})
    assert corpus_index(config).classes == ["siren", "dog", "rooster", "drum", "printer"]
    found = check_node_shares(config, {f"n{k}": (v, int(k), 2) for k, v in config.nodes.items()},
                              "exp.json")
    # Folds 1-4 / 5 of one class; 0.8 / 0.1 / 0.1 of three classes of 6 clips.
    assert found == ["n0: 8 train / 0 val / 2 test clips", "n1: 12 train / 3 val / 3 test clips"]


def test_mixed_federation_runs_in_process(tmp_path: Path) -> None:
    """The ServerApp's and the nodes' code in one process: an ESC-50 node (upstream's layout)
    and a VEGAS node under one `dataset.path`; the server's targets are the union of classes."""
    from drills import LoopbackGrid, experiment_dict, run_in_process

    audio = tmp_path / "Audio"
    _write(audio / "esc50-v2.0.0-full", "esc50-upstream", ["siren", "dog"], 5, clip_seconds=0.2)
    _write(audio / "VEGAS", "vegas", ["dog", "drum"], 5, seed=1, clip_seconds=0.2)
    experiment = experiment_dict(
        tmp_path, "mixed", federation={"global_rounds": 2, "num_clients": 2, "min_clients": 2},
        nodes={"0": {"dataset": "esc50"}, "1": {"dataset": "vegas"}})
    experiment["dataset"] = {"name": "mixed", "path": str(audio), "use_folds": False,
                             "partition": "classes"}
    experiment["experiment"]["cache_dir"] = str(tmp_path / "cache")
    run_dir = run_in_process(experiment, tmp_path / "mixed.json", LoopbackGrid(2))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["num_nodes"] == 2 and not summary["failed_replies"]
    assert summary["encoded_clips"] == 20  # 10 clips a node: 8 train, 1 val, 1 test
    assert "val_clip_mse" in summary
    assert FedA2VAdapters.from_pretrained(run_dir).class_names == ["siren", "dog", "drum"]
