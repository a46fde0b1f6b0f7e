"""CSV manifests (captions, splits, folds), prompts, and partition properties on random configs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.schema import Config, NodeConfig
from fed_a2v.config.validate import config_from_dict
from fed_a2v.data.corpora import Clip, Corpus, read_manifest
from fed_a2v.data.splits import split_for_node
from fed_a2v.encode.text_targets import target_prompts


def write_manifest(root: Path, rows: list[dict], columns: list[str]) -> Path:
    (root / "clips").mkdir(parents=True, exist_ok=True)
    for row in rows:
        soundfile.write(root / row["path"], np.zeros(1600, dtype=np.float32), 16000)
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: row.get(k, "") for k in columns} for row in rows)
    return root / "manifest.csv"


def test_manifest_with_captions_and_splits(tmp_path: Path) -> None:
    rows = [{"path": f"clips/{i}.wav", "label": "dog" if i % 2 else "cat",
             "caption": f"a {'dog' if i % 2 else 'cat'} number {i}",
             "split": "test" if i >= 8 else "train"} for i in range(10)]
    corpus = read_manifest(write_manifest(tmp_path, rows, ["path", "label", "caption", "split"]))
    assert corpus.classes == ["cat", "dog"] and corpus.has_captions
    assert corpus.clips[3].path == tmp_path / "clips" / "3.wav"
    # A folder holding manifest.csv reads the same.
    assert read_manifest(tmp_path).clips == corpus.clips
    split = split_for_node(corpus, NodeConfig(), 0, 1, Config())
    assert sorted(c.path.name for c in split.test) == ["8.wav", "9.wav"]
    assert len(split.train) == 8
    names, prompts = target_prompts(corpus, Config())
    assert names == prompts == sorted(r["caption"] for r in rows)


def test_manifest_without_split_gets_seeded_folds(tmp_path: Path) -> None:
    rows = [{"path": f"clips/{i}.wav", "label": f"c{i % 3}"} for i in range(30)]
    path = write_manifest(tmp_path, rows, ["path", "label"])
    corpus = read_manifest(path, seed=1)
    assert {c.fold for c in corpus.clips} == {1, 2, 3, 4, 5}
    for label in corpus.classes:  # stratified: two clips of each class in each fold
        folds = [c.fold for c in corpus.clips if c.label == label]
        assert sorted(folds) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert read_manifest(path, seed=1).clips == corpus.clips
    assert read_manifest(path, seed=2).clips != corpus.clips
    names, prompts = target_prompts(corpus, config_from_dict(
        {"dataset": {"prompt_template": "the sound of a {label}"}}))
    assert names == ["c0", "c1", "c2"] and prompts[0] == "the sound of a c0"


def test_manifest_folds_column_is_used(tmp_path: Path) -> None:
    rows = [{"path": f"clips/{i}.wav", "label": "x", "fold": str(i % 2 + 1)} for i in range(6)]
    corpus = read_manifest(write_manifest(tmp_path, rows, ["path", "label", "fold"]))
    assert [c.fold for c in corpus.clips] == [1, 2, 1, 2, 1, 2]


@pytest.mark.parametrize("columns,rows,message", [
    (["file", "label"], [{"file": "a.wav", "label": "x"}], "missing column"),
    (["path", "label"], [{"path": "clips/a.wav", "label": ""}], "line 2"),
    (["path", "label", "split"], [{"path": "clips/a.wav", "label": "x", "split": "dev"}],
     "train, val, test"),
])
def test_bad_manifests_name_file_and_line(tmp_path: Path, columns, rows, message) -> None:
    (tmp_path / "clips").mkdir()
    with open(tmp_path / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(ConfigError, match=message) as err:
        read_manifest(tmp_path / "manifest.csv")
    assert "manifest.csv" in str(err.value)


def test_prompt_template_must_only_use_label() -> None:
    with pytest.raises(ConfigError, match="prompt_template"):
        config_from_dict({"dataset": {"prompt_template": "a {sound}"}})


# --- partitions: disjoint, complete, reproducible, whatever the config ----------------------

def synthetic_corpus(num_classes: int, per_class: int) -> Corpus:
    clips = [Clip(Path(f"/corpus/{c}-{i}.wav"), f"class{c}", i % 5 + 1)
             for c in range(num_classes) for i in range(per_class)]
    return Corpus(Path("/corpus"), [f"class{c}" for c in range(num_classes)], clips)


partition_configs = st.fixed_dictionaries({
    "num_classes": st.integers(1, 6),
    "per_class": st.integers(5, 25),  # every fold present
    "num_nodes": st.integers(1, 6),
    "seed": st.integers(0, 10_000),
    "partition": st.sampled_from(["nodes", "dirichlet"]),
    "alpha": st.floats(0.05, 10.0),
    "class_subsets": st.lists(st.lists(st.integers(0, 5), max_size=4), min_size=6, max_size=6),
})


def splits_for(p: dict) -> tuple[Corpus, Config, list]:
    corpus = synthetic_corpus(p["num_classes"], p["per_class"])
    config = Config()
    config.experiment.seed = p["seed"]
    config.dataset.partition = p["partition"]
    config.dataset.dirichlet_alpha = p["alpha"]
    splits = []
    for node in range(p["num_nodes"]):
        chosen = [f"class{c}" for c in p["class_subsets"][node] if c < p["num_classes"]]
        settings = NodeConfig(selected_classes=chosen or None)
        splits.append(split_for_node(corpus, settings, node, p["num_nodes"], config))
    return corpus, config, splits


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(partition_configs)
def test_partitions_are_disjoint_complete_and_reproducible(p: dict) -> None:
    corpus, config, splits = splits_for(p)
    train = [c for s in splits for c in s.train]
    test = [c for s in splits for c in s.test]
    assert len(train) == len(set(train)), "a clip is in two nodes' training sets"
    assert len(test) == len(set(test))
    assert not set(train) & set(test), "a node trains on a held-out clip"
    assert all(c.fold in (1, 2, 3, 4) for c in train) and all(c.fold == 5 for c in test)
    for split in splits:
        assert {c.label for c in split.train + split.test} <= set(split.classes)
    # Complete: when every node keeps every class, the nodes hold the whole corpus.
    everyone = dict(p, class_subsets=[[]] * 6)
    _, _, full = splits_for(everyone)
    held = [c for s in full for c in s.train + s.test]
    assert sorted(map(str, held)) == sorted(map(str, corpus.clips))
    # Reproducible from the config alone.
    assert splits_for(p)[2] == splits


def test_dirichlet_skews_classes_across_nodes() -> None:
    p = {"num_classes": 4, "per_class": 200, "num_nodes": 4, "seed": 0,
         "partition": "dirichlet", "alpha": 0.1, "class_subsets": [[]] * 6}
    _, _, splits = splits_for(p)
    shares = np.array([[sum(c.label == f"class{k}" for c in s.train) for k in range(4)]
                       for s in splits], dtype=float)
    shares /= shares.sum(axis=0, keepdims=True)
    assert shares.max(axis=0).mean() > 0.6  # classes mostly sit on one node (even: 0.25)
    p["partition"] = "nodes"
    _, _, even = splits_for(p)
    counts = [sum(c.label == "class0" for c in s.train) for s in even]
    assert max(counts) - min(counts) <= 1


def test_use_folds_limits_a_node_to_its_folds() -> None:
    corpus = synthetic_corpus(2, 10)
    split = split_for_node(corpus, NodeConfig(use_folds=[1, 2, 5]), 0, 1, Config())
    assert {c.fold for c in split.train} == {1, 2}
    assert {c.fold for c in split.test} == {5}
    with pytest.raises(ConfigError, match="use_folds"):
        split_for_node(corpus, NodeConfig(use_folds=[9]), 0, 1, Config())
