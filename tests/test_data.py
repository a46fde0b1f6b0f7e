"""The synthetic corpus in ESC-50 layout, reading it, and disjoint reproducible node splits."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pytest
import soundfile

from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.schema import Config, NodeConfig
from fed_a2v.data.builtin.synthetic import SOUNDS, ensure_synthetic_corpus
from fed_a2v.data.corpora import read_esc50
from fed_a2v.data.splits import shard_clips, split_for_node

SMALL = {"num_classes": 4, "clips_per_class": 10, "clip_seconds": 0.5, "sample_rate": 16000}
CLASSES = list(SOUNDS)[:4]  # dog, rooster, siren, rain


def _make(root: Path, seed: int = 0, **overrides) -> Path:
    settings = SMALL | overrides
    return ensure_synthetic_corpus(root, seed, settings["num_classes"],
                                   settings["clips_per_class"], settings["clip_seconds"],
                                   settings["sample_rate"])


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory) -> Path:
    return _make(tmp_path_factory.mktemp("corpus") / "synthetic")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_synthetic_corpus_layout(corpus_root):
    with open(corpus_root / "meta" / "esc50.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["filename", "fold", "target", "category", "esc10", "src_file",
                             "take"]
    assert len(rows) == 40
    wavs = sorted(p.name for p in (corpus_root / "audio").glob("*.wav"))
    assert wavs == sorted(r["filename"] for r in rows)
    for row in rows:
        assert CLASSES[int(row["target"])] == row["category"]
        assert 1 <= int(row["fold"]) <= 5
    for name in CLASSES:  # ten clips per class, two per fold
        folds = sorted(int(r["fold"]) for r in rows if r["category"] == name)
        assert folds == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    info = soundfile.info(corpus_root / "audio" / rows[0]["filename"])
    assert info.samplerate == 16000 and info.channels == 1 and info.frames == 8000
    data, _ = soundfile.read(corpus_root / "audio" / rows[0]["filename"])
    assert abs(data).max() > 0.1  # a sound, not silence


def test_synthetic_corpus_is_deterministic(tmp_path, corpus_root):
    same = _files(_make(tmp_path / "same", seed=0))
    assert same == _files(corpus_root)
    other = _files(_make(tmp_path / "other", seed=1))
    assert other.keys() == same.keys()
    wavs = [k for k in same if k.endswith(".wav")]
    assert all(other[k] != same[k] for k in wavs)


def test_second_call_is_a_no_op(tmp_path):
    root = _make(tmp_path / "c", num_classes=2, clips_per_class=5)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}
    assert _make(root, num_classes=2, clips_per_class=5) == root
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}
    assert after == before
    assert not list(tmp_path.glob(".c.tmp-*"))


def test_other_settings_on_same_folder_rejected(tmp_path):
    root = _make(tmp_path / "c", num_classes=2, clips_per_class=5)
    with pytest.raises(ValueError, match="synthetic corpus"):
        _make(root, num_classes=3, clips_per_class=5)
    with pytest.raises(ValueError):
        _make(root, seed=1, num_classes=2, clips_per_class=5)


def test_non_empty_foreign_folder_rejected(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a synthetic corpus"):
        _make(root)
    assert (root / "notes.txt").read_text() == "keep me"


def test_read_esc50(corpus_root):
    corpus = read_esc50(corpus_root)
    assert corpus.classes == CLASSES
    assert len(corpus.clips) == 40
    assert {c.fold for c in corpus.clips} == {1, 2, 3, 4, 5}
    assert all(c.path.exists() and c.label in CLASSES for c in corpus.clips)


def test_read_esc50_orders_classes_by_target(tmp_path):
    (tmp_path / "meta").mkdir()
    rows = [["filename", "fold", "target", "category"],
            ["c.wav", 2, 2, "cow"], ["a.wav", 1, 0, "dog"], ["b.wav", 1, 1, "rain"],
            ["d.wav", 3, 0, "dog"]]
    with open(tmp_path / "meta" / "esc50.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    corpus = read_esc50(tmp_path)
    assert corpus.classes == ["dog", "rain", "cow"]
    assert [(c.path.name, c.label, c.fold) for c in corpus.clips] == [
        ("c.wav", "cow", 2), ("a.wav", "dog", 1), ("b.wav", "rain", 1), ("d.wav", "dog", 3)]


def test_read_esc50_errors(tmp_path):
    with pytest.raises(ConfigError, match="esc50.csv"):
        read_esc50(tmp_path)
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "esc50.csv").write_text("filename,fold,target,category\nx.wav,one,0,dog\n")
    with pytest.raises(ConfigError, match="line 2"):
        read_esc50(tmp_path)


# ---------------------------------------------------------------------------------------------
# Node splits

SELECTIONS = [["dog", "rooster", "siren"], ["rooster", "siren", "rain"], ["dog", "rain", "siren"]]


def _config() -> Config:
    config = Config()
    config.dataset.train_folds = [1, 2, 3, 4]
    config.dataset.test_folds = [5]
    return config


def _splits(corpus, config):
    return [split_for_node(corpus, NodeConfig(selected_classes=sel), i, 3, config)
            for i, sel in enumerate(SELECTIONS)]


def test_node_splits_are_disjoint_and_respect_classes_and_folds(corpus_root):
    corpus = read_esc50(corpus_root)
    splits = _splits(corpus, _config())
    for split, selected in zip(splits, SELECTIONS, strict=True):
        assert split.classes == [c for c in CLASSES if c in selected]
        assert split.train and split.test
        assert {c.label for c in split.train + split.test} <= set(selected)
        assert {c.fold for c in split.train} <= {1, 2, 3, 4}
        assert {c.fold for c in split.test} == {5}
        assert not set(split.train) & set(split.test)
    for a, b in itertools.combinations(splits, 2):
        assert not set(a.train) & set(b.train)
        assert not set(a.test) & set(b.test)
        assert not set(a.train) & set(b.test)


def test_node_splits_are_reproducible(corpus_root):
    corpus = read_esc50(corpus_root)
    assert _splits(corpus, _config()) == _splits(read_esc50(corpus_root), _config())


def test_shards_cover_every_clip_once(corpus_root):
    corpus = read_esc50(corpus_root)
    shards = shard_clips(corpus, 3, seed=0)
    flat = [c for shard in shards for c in shard]
    assert sorted(map(str, (c.path for c in flat))) == sorted(str(c.path) for c in corpus.clips)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert shard_clips(corpus, 3, seed=0) == shards
    assert shard_clips(corpus, 3, seed=1) != shards


def test_excluded_classes_and_own_folds(corpus_root):
    corpus = read_esc50(corpus_root)
    node = NodeConfig(excluded_classes=["dog"], train_folds=[1, 2], test_folds=[3])
    split = split_for_node(corpus, node, 0, 1, _config())
    assert split.classes == CLASSES[1:]
    assert {c.label for c in split.train} == set(CLASSES[1:])
    assert {c.fold for c in split.train} == {1, 2} and {c.fold for c in split.test} == {3}
    assert len(split.train) == 3 * 4 and len(split.test) == 3 * 2  # one node holds everything


def test_node_split_id_overrides_index(corpus_root):
    corpus = read_esc50(corpus_root)
    by_index = split_for_node(corpus, NodeConfig(), 1, 3, _config())
    by_id = split_for_node(corpus, NodeConfig(node_split_id=1, num_nodes=3), 0, 1, _config())
    assert by_id == by_index


def test_unknown_class_names_it_with_suggestion(corpus_root):
    corpus = read_esc50(corpus_root)
    with pytest.raises(ConfigError) as info:
        split_for_node(corpus, NodeConfig(selected_classes=["dgo"]), 0, 3, _config(),
                       where="node 0")
    message = str(info.value)
    assert "node 0" in message and "'dgo'" in message and "did you mean 'dog'" in message


def test_unknown_excluded_class(corpus_root):
    with pytest.raises(ConfigError, match="roster"):
        split_for_node(read_esc50(corpus_root), NodeConfig(excluded_classes=["roster"]), 0, 3,
                       _config())


@pytest.mark.parametrize("node", [NodeConfig(train_folds=[1, 6]), NodeConfig(test_folds=[9])])
def test_fold_not_in_corpus(corpus_root, node):
    with pytest.raises(ConfigError, match="corpus does not have"):
        split_for_node(read_esc50(corpus_root), node, 0, 3, _config())


def test_overlapping_folds_rejected(corpus_root):
    node = NodeConfig(train_folds=[1, 2, 5], test_folds=[5])
    with pytest.raises(ConfigError, match="overlap"):
        split_for_node(read_esc50(corpus_root), node, 0, 3, _config())


def test_configs_relying_on_synthetic_defaults_each_get_their_own_corpus(tmp_path,
                                                                       monkeypatch):
    """Two configs that leave `dataset.path` out but generate differently both work, in
    either order, in one working directory (as after `make run`)."""
    from fed_a2v.config.validate import config_from_dict
    from fed_a2v.data.node_corpora import check_node_shares, open_corpus

    monkeypatch.chdir(tmp_path)
    small = {"clip_seconds": 0.2, "sample_rate": 8000}
    first = config_from_dict({"dataset": {**small, "num_classes": 2, "clips_per_class": 5}})
    second = config_from_dict({"dataset": {**small, "num_classes": 3, "clips_per_class": 5}})
    for config in (first, second, first):
        config.make_paths_absolute()
        check_node_shares(config, {}, "exp.json", generate=True)  # what `simulate` does first
        assert len(open_corpus(config).classes) == config.dataset.num_classes
    assert Path(first.dataset.path).parent == Path(second.dataset.path).parent == tmp_path / "data"
    assert first.dataset.path != second.dataset.path
