"""Node splits against hand counts: ratio splits (stratified or not, seeded per node), fold
splits with val, upstream's class partition (num_samples_per_class, samples_per_node,
num_nodes), layout-given splits, and the overlap check (val is held out; standalone runs)."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest

from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.schema import Config, NodeConfig
from fed_a2v.config.validate import config_from_dict
from fed_a2v.data.builtin.layouts import write_layout
from fed_a2v.data.corpora import Corpus, read_esc50, read_vegas, read_vggsound
from fed_a2v.data.node_corpora import check_node_shares
from fed_a2v.data.overlap import OverlapError
from fed_a2v.data.splits import NodeSplit, split_for_node

TINY = {"clip_seconds": 0.05, "sample_rate": 8000}
THREE = ["dog", "drum", "printer"]


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("splits")
    return {"vegas20": write_layout(base / "vegas20", "vegas", THREE, 20, **TINY),
            "vegas12": write_layout(base / "vegas12", "vegas", THREE, 12, **TINY),
            "vegas10": write_layout(base / "vegas10", "vegas", THREE, 10, **TINY),
            "vegas5": write_layout(base / "vegas5", "vegas", THREE, 5, **TINY),
            "esc": write_layout(base / "esc", "esc50-upstream", THREE, 10, **TINY),
            "vgg": write_layout(base / "vgg", "vggsound", THREE, 10, **TINY)}


def _config(**dataset) -> Config:
    return config_from_dict({"dataset": dataset})


def _split(corpus: Corpus, node: NodeConfig, index: int = 0, **dataset) -> NodeSplit:
    return split_for_node(corpus, node, index, 1, _config(**dataset), "exp.json: 'nodes.0'")


def _per_class(split: NodeSplit) -> dict[str, tuple[int, int, int]]:
    counts = {part: Counter(c.label for c in getattr(split, part))
              for part in ("train", "val", "test")}
    return {label: (counts["train"][label], counts["val"][label], counts["test"][label])
            for label in split.classes}


def _disjoint_and_whole(split: NodeSplit, corpus: Corpus) -> None:
    parts = [set(split.train), set(split.val), set(split.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == {c for c in corpus.clips if c.label in split.classes}


# ---------------------------------------------------------------------------------------------
# Ratio splits: per class n_test = round(test * n), n_val = round(val * n) (halves up), rest train


@pytest.mark.parametrize("node,per_class", [
    (NodeConfig(use_folds=False, train_ratio=0.8, val_ratio=0.1, test_ratio=0.1), (16, 2, 2)),
    (NodeConfig(use_folds=False), (16, 2, 2)),  # defaults 0.8, val 0.1, test what is left
    (NodeConfig(use_folds=False, train_ratio=0.7, val_ratio=0.15), (14, 3, 3)),
    (NodeConfig(use_folds=False, train_ratio=0.9, val_ratio=0.1), (18, 2, 0)),
    (NodeConfig(use_folds=False, train_ratio=1.0, val_ratio=0.0), (20, 0, 0)),
])
def test_ratio_split_hand_counts(roots, node: NodeConfig, per_class: tuple) -> None:
    corpus = read_vegas(roots["vegas20"])
    split = _split(corpus, node)
    assert _per_class(split) == dict.fromkeys(THREE, per_class)
    _disjoint_and_whole(split, corpus)


def test_ratios_are_taken_from_the_dataset_section(roots) -> None:
    corpus = read_vegas(roots["vegas20"])
    split = _split(corpus, NodeConfig(), use_folds=False, train_ratio=0.5, val_ratio=0.25)
    assert _per_class(split) == dict.fromkeys(THREE, (10, 5, 5))
    node_wins = _split(corpus, NodeConfig(val_ratio=0.0), use_folds=False, train_ratio=0.5,
                       val_ratio=0.25)
    assert _per_class(node_wins) == dict.fromkeys(THREE, (10, 0, 10))


def test_halves_round_up(roots) -> None:
    """5 clips per class at 0.8 / 0.1 / 0.1: 0.5 test and 0.5 val clips round to 1 each."""
    split = _split(read_vegas(roots["vegas5"]), NodeConfig(use_folds=False))
    assert _per_class(split) == dict.fromkeys(THREE, (3, 1, 1))


def test_ratios_not_summing_to_one_are_scaled_with_a_warning(roots, caplog) -> None:
    node = NodeConfig(use_folds=False, train_ratio=0.6, val_ratio=0.2, test_ratio=0.1)
    with caplog.at_level(logging.WARNING, logger="fed_a2v.data.splits"):
        split = _split(read_vegas(roots["vegas20"]), node)
    # Scaled to 2/3, 2/9, 1/9: of 20, round(4.44) = 4 val and round(2.22) = 2 test.
    assert _per_class(split) == dict.fromkeys(THREE, (14, 4, 2))
    assert "exp.json: 'nodes.0'" in caplog.text and "sum to 0.9" in caplog.text


def test_unstratified_ratio_split_counts_the_whole_list(roots) -> None:
    corpus = read_vegas(roots["vegas20"])
    split = _split(corpus, NodeConfig(use_folds=False, stratify=False))
    assert (len(split.train), len(split.val), len(split.test)) == (48, 6, 6)
    _disjoint_and_whole(split, corpus)
    stratified = _split(corpus, NodeConfig(use_folds=False))
    assert split.test != stratified.test


def test_seed_is_node_split_seed_plus_the_node_id(roots) -> None:
    corpus = read_vegas(roots["vegas20"])
    ratio = NodeConfig(use_folds=False)
    first = _split(corpus, ratio, 0, partition="classes")
    assert _split(corpus, ratio, 0, partition="classes") == first  # the same seed, same split
    second = _split(corpus, ratio, 1, partition="classes")
    assert set(second.test) != set(first.test)  # another node index, another split
    # 42 + 1 three ways: node index 1, node_split_id 1, node_split_seed 43.
    assert _split(corpus, NodeConfig(use_folds=False, node_split_id=1), 0,
                  partition="classes") == second
    assert _split(corpus, NodeConfig(use_folds=False, node_split_seed=43), 0,
                  partition="classes") == second
    assert _split(corpus, ratio, 0, partition="classes", node_split_seed=43) == second


# ---------------------------------------------------------------------------------------------
# Fold splits with val


def test_val_folds_leave_the_training_folds(roots) -> None:
    corpus = read_esc50(roots["esc"])  # 10 clips per class, 2 per fold
    split = _split(corpus, NodeConfig(val_folds=[4]))
    assert _per_class(split) == dict.fromkeys(THREE, (6, 2, 2))
    assert {c.path.parent.name for c in split.val} == {"fold03"}  # native fold 4
    assert {c.fold for c in split.train} == {1, 2, 3}
    _disjoint_and_whole(split, corpus)
    dataset_level = _split(corpus, NodeConfig(), val_folds=[4])
    assert dataset_level == split


def test_val_ratio_of_the_training_folds(roots) -> None:
    corpus = read_esc50(roots["esc"])
    split = _split(corpus, NodeConfig(val_ratio=0.25))  # 8 training-fold clips per class
    assert _per_class(split) == dict.fromkeys(THREE, (6, 2, 2))
    assert {c.fold for c in split.val} <= {1, 2, 3, 4} and {c.fold for c in split.test} == {5}
    assert _split(corpus, NodeConfig()).val == []  # fold splits: no val unless asked


def test_fold_lists_with_val(roots) -> None:
    corpus = read_esc50(roots["esc"])
    split = _split(corpus, NodeConfig(use_folds=[1, 2, 5], val_folds=[2]))
    assert ({c.fold for c in split.train}, {c.fold for c in split.val},
            {c.fold for c in split.test}) == ({1}, {2}, {5})
    with pytest.raises(ConfigError, match=r"'nodes.0'.*val folds \[5\].*test folds \[5\]"):
        _split(corpus, NodeConfig(val_folds=[5]))
    with pytest.raises(ConfigError, match=r"'val_folds' has fold 7"):
        _split(corpus, NodeConfig(val_folds=[7]))


# ---------------------------------------------------------------------------------------------
# Splits the layout gives


def test_vggsound_follows_its_csv_and_takes_val_from_train(roots) -> None:
    corpus = read_vggsound(roots["vgg"])  # per class: 8 train and 2 test in the CSV
    split = _split(corpus, NodeConfig(use_folds=False, train_ratio=0.7, val_ratio=0.1,
                                      test_ratio=0.2))
    # Test stays the CSV's; val is round(0.1 * 8) = 1 of the CSV's training clips.
    assert _per_class(split) == dict.fromkeys(THREE, (7, 1, 2))
    assert {c.split for c in split.test} == {"test"} and {c.split for c in split.val} == {"train"}


def test_manifest_val_split_is_followed(tmp_path: Path) -> None:
    from fed_a2v.data.corpora import read_manifest

    rows = "".join(f"a{i}.wav,x,{s}\n" for i, s in enumerate(["train"] * 6 + ["val", "test"]))
    (tmp_path / "manifest.csv").write_text("path,label,split\n" + rows)
    corpus = read_manifest(tmp_path)
    for node in (NodeConfig(), NodeConfig(use_folds=False)):
        split = _split(corpus, node)
        assert [c.path.name for c in split.val] == ["a6.wav"]
        assert [c.path.name for c in split.test] == ["a7.wav"] and len(split.train) == 6


# ---------------------------------------------------------------------------------------------
# Partition "classes" (upstream): whole classes, cut only by the node's own split id

WHOLE = {"use_folds": False, "train_ratio": 1.0, "val_ratio": 0.0}  # every clip in train


def _share(corpus: Corpus, **node) -> list:
    split = _split(corpus, NodeConfig(**WHOLE, **node), partition="classes")
    assert not split.val and not split.test
    return split.train


def test_samples_per_node_blocks(roots) -> None:
    corpus = read_vegas(roots["vegas12"])
    shares = [_share(corpus, node_split_id=i, samples_per_node=5) for i in range(3)]
    assert [Counter(c.label for c in s) for s in shares] == [
        dict.fromkeys(THREE, 5), dict.fromkeys(THREE, 5), dict.fromkeys(THREE, 2)]
    assert sum(len(s) for s in shares) == len({c for s in shares for c in s}) == 36


def test_num_nodes_blocks(roots) -> None:
    corpus = read_vegas(roots["vegas10"])
    shares = [_share(corpus, node_split_id=i, num_nodes=3) for i in range(3)]
    assert [Counter(c.label for c in s) for s in shares] == [
        dict.fromkeys(THREE, 4), dict.fromkeys(THREE, 3), dict.fromkeys(THREE, 3)]
    assert {c for s in shares for c in s} == set(corpus.clips)  # disjoint and complete
    assert sum(len(s) for s in shares) == 30
    assert _share(corpus, node_split_id=0, num_nodes=3) == shares[0]
    reseeded = _share(corpus, node_split_id=0, num_nodes=3, node_split_seed=7)
    assert set(reseeded) != set(shares[0])


def test_num_samples_per_class_keeps_the_first_clips(roots) -> None:
    corpus = read_vegas(roots["vegas12"])
    first = _share(corpus, num_samples_per_class=4)
    assert [c.path.name for c in first if c.label == "dog"] == [
        f"video_{i:05d}.wav" for i in range(4)]
    assert len(first) == 12
    # Not with samples_per_node (as upstream): the block is cut from all 12 per class.
    assert len(_share(corpus, num_samples_per_class=4, node_split_id=0, samples_per_node=5)) == 15
    assert len(_share(corpus, selected_classes=["drum"])) == 12  # whole class, no cut


def test_class_partition_errors(roots) -> None:
    corpus = read_vegas(roots["vegas12"])
    with pytest.raises(ConfigError, match=r"'nodes.0'.*'samples_per_node' and 'num_nodes'"):
        _share(corpus, node_split_id=0, samples_per_node=5, num_nodes=2)
    with pytest.raises(ConfigError, match=r"'samples_per_node' needs 'dataset.partition'"):
        _split(corpus, NodeConfig(**WHOLE, node_split_id=0, samples_per_node=5))


# ---------------------------------------------------------------------------------------------
# Overlap: val clips are held out; whole shared classes overlap; standalone runs may


def _shares(root: Path, nodes: dict, **extra) -> tuple[Config, dict]:
    config = config_from_dict({"dataset": {"name": "vegas", "path": str(root),
                                           "partition": "classes", "use_folds": False},
                               "nodes": nodes, **extra})
    return config, {f"exp.json: 'nodes.{k}'": (v, int(k), len(nodes))
                    for k, v in config.nodes.items()}


def test_shared_classes_overlap_in_the_class_partition(roots) -> None:
    same = {"selected_classes": ["dog"]}
    config, nodes = _shares(roots["vegas10"], {"0": same, "1": same})
    with pytest.raises(OverlapError, match=r"(?s)training clips are in both.*node_split_id"):
        check_node_shares(config, nodes, "exp.json")
    assert check_node_shares(config, nodes, "exp.json", allow_overlap=True) == [
        "exp.json: 'nodes.0': 8 train / 1 val / 1 test clips",
        "exp.json: 'nodes.1': 8 train / 1 val / 1 test clips"]
    standalone, nodes = _shares(roots["vegas10"], {"0": same, "1": same},
                                feda2v={"adapter_aggregation_mode": "none"})
    assert len(check_node_shares(standalone, nodes, "exp.json")) == 2
    cut = {"0": {**same, "node_split_id": 0, "num_nodes": 2},
           "1": {**same, "node_split_id": 1, "num_nodes": 2}}
    config, nodes = _shares(roots["vegas10"], cut)
    assert check_node_shares(config, nodes, "exp.json") == [
        "exp.json: 'nodes.0': 3 train / 1 val / 1 test clips",
        "exp.json: 'nodes.1': 3 train / 1 val / 1 test clips"]


def test_val_clips_count_as_held_out(roots) -> None:
    """Node a validates on fold 4, node b trains on it: 6 of a's 12 held-out clips leak."""
    whole = {"node_split_id": 0, "num_nodes": 1}
    config = config_from_dict({"dataset": {"name": "esc50", "path": str(roots["esc"])}, "nodes": {
        "0": {**whole, "train_folds": [1, 2, 3], "val_folds": [4], "test_folds": [5]},
        "1": {**whole, "train_folds": [4], "test_folds": [5]}}})
    nodes = {name: (config.nodes[k], int(k), 2) for k, name in (("0", "a"), ("1", "b"))}
    with pytest.raises(OverlapError) as err:
        check_node_shares(config, nodes, "exp.json")
    assert "6 of a's 12 held-out clips are in b's training set" in str(err.value)
    assert "training clips are in both" not in str(err.value)
    assert "partition" not in str(err.value)  # the class-partition hint is for that partition


def test_a_node_cut_past_its_clips_is_named(roots) -> None:
    config, nodes = _shares(roots["vegas12"], {"0": {"node_split_id": 3, "samples_per_node": 5}})
    with pytest.raises(ConfigError, match=r"'nodes.0': no training clip.*3 classes have 36 clips"):
        check_node_shares(config, nodes, "exp.json")
