"""Audio files a corpus's metadata names but the disk lacks are errors before a run: `validate`
and `simulate` exit 2 naming the manifest or metadata file and the missing files."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import soundfile

from fed_a2v import cli
from fed_a2v.cli import main
from fed_a2v.data.builtin.synthetic import ensure_synthetic_corpus
from fed_a2v.data.clip_files import SHOWN, missing_files


def _wav(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.zeros(1600, dtype=np.float32), 16000)
    return path


def _manifest(folder: Path, per_class: int = 10, missing: tuple[str, ...] = ()) -> Path:
    """A manifest of dog and siren clips (relative paths), plus rows for `missing` files."""
    rows = ["path,label"]
    for label in ("dog", "siren"):
        for i in range(per_class):
            _wav(folder / "audio" / f"{label}{i}.wav")
            rows.append(f"audio/{label}{i}.wav,{label}")
    rows += [f"{name},dog" for name in missing]
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def _experiment(tmp_path: Path, name: str, path: Path, **sections) -> Path:
    experiment = tmp_path / "exp.json"
    experiment.write_text(json.dumps({"dataset": {"name": name, "path": str(path)},
                                      "federation": {"num_clients": 2}, **sections}))
    return experiment


def test_all_files_present_validates(tmp_path: Path, capsys) -> None:
    experiment = _experiment(tmp_path, "csv", _manifest(tmp_path / "data"))
    assert main(["validate", str(experiment)]) == 0
    assert "ok" in capsys.readouterr().out


def test_a_manifest_row_without_its_file_fails_validate(tmp_path: Path, capsys) -> None:
    manifest = _manifest(tmp_path / "data", missing=("audio/dgo3.wav",))
    assert main(["validate", str(_experiment(tmp_path, "csv", manifest))]) == 2
    err = capsys.readouterr().err
    assert str(manifest) in err and "1 audio file that does not exist" in err
    assert str(tmp_path / "data" / "audio" / "dgo3.wav") in err
    assert "'dataset.path'" in err


def test_many_missing_files_are_listed_then_counted(tmp_path: Path, capsys) -> None:
    names = tuple(f"gone/{i:02d}.wav" for i in range(SHOWN + 5))
    manifest = _manifest(tmp_path / "data", missing=names)
    assert main(["validate", str(_experiment(tmp_path, "csv", manifest))]) == 2
    err = capsys.readouterr().err
    assert f"names {SHOWN + 5} audio files" in err
    assert str(tmp_path / "data" / names[SHOWN - 1]) in err
    assert str(tmp_path / "data" / names[SHOWN]) not in err and "... and 5 more" in err


def test_an_esc50_metadata_row_without_its_file_fails_validate(tmp_path: Path, capsys) -> None:
    data = ensure_synthetic_corpus(tmp_path / "esc", 0, 3, 10, 0.3, 16000)
    gone = sorted((data / "audio").glob("*.wav"))[4]
    gone.unlink()
    assert main(["validate", str(_experiment(tmp_path, "esc50", data))]) == 2
    err = capsys.readouterr().err
    assert str(data / "meta" / "esc50.csv") in err and str(gone) in err


def test_upstream_fold_lists_name_their_missing_files(tmp_path: Path) -> None:
    root = tmp_path / "esc"
    (root / "class_labels.json").parent.mkdir(parents=True)
    (root / "class_labels.json").write_text(json.dumps({"dog": 0}))
    _wav(root / "audio" / "fold00" / "a.wav")
    (root / "fold00.json").write_text(json.dumps({"a.wav": ["dog"], "b.wav": ["dog"]}))
    (root / "fold01.json").write_text(json.dumps({}))
    assert missing_files("esc50", root) == {root / "fold00.json": [root / "audio" / "fold00" /
                                                                   "b.wav"]}


def test_a_nodes_own_manifest_is_checked_with_node(tmp_path: Path, capsys) -> None:
    experiment = _experiment(tmp_path, "csv", _manifest(tmp_path / "data"))
    manifest = _manifest(tmp_path / "mine", missing=("audio/lost.wav",))
    node = tmp_path / "node.json"
    node.write_text(json.dumps({"dataset_path": str(manifest)}))
    assert main(["validate", str(experiment), "--node", str(node)]) == 2
    err = capsys.readouterr().err
    assert str(node) in err and str(manifest) in err and "lost.wav" in err


def test_builtin_corpus_not_made_yet_is_not_checked(tmp_path: Path) -> None:
    experiment = _experiment(tmp_path, "synthetic", tmp_path / "not-yet")
    assert main(["validate", str(experiment)]) == 0
    assert not (tmp_path / "not-yet").exists()


def test_simulate_with_a_missing_file_exits_2_before_starting_anything(
        tmp_path: Path, monkeypatch, capsys) -> None:
    def started(*args, **kwargs):
        raise AssertionError("the federation was started")

    monkeypatch.setattr(cli, "start_superlink", started)
    monkeypatch.setattr(cli, "new_run_dir", started)
    data = ensure_synthetic_corpus(tmp_path / "esc", 0, 3, 10, 0.3, 16000)
    copy = shutil.copytree(data, tmp_path / "copy")
    gone = sorted((copy / "audio").glob("*.wav"))[0]
    gone.unlink()
    experiment = _experiment(tmp_path, "esc50", copy,
                             experiment={"output_dir": str(tmp_path / "runs")})
    handler = signal.getsignal(signal.SIGTERM)  # simulate installs its own
    try:
        assert main(["simulate", "--config", str(experiment)]) == 2
    finally:
        signal.signal(signal.SIGTERM, handler)
    err = capsys.readouterr().err
    assert str(copy / "meta" / "esc50.csv") in err and str(gone) in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("kind", ["vegas", "vggsound"])
def test_corpora_listing_a_whole_public_set_are_not_checked(tmp_path: Path, kind: str) -> None:
    assert missing_files(kind, tmp_path) == {}
