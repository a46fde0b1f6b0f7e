"""The generated configuration reference and JSON Schemas: current, complete, and in step with
the loader on the shipped configs and on values it rejects."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from fed_a2v.config import reference
from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.load import load_config, load_node_config
from fed_a2v.config.schema import SCHEMA_KEY, Config, NodeConfig
from fed_a2v.config.upstream import is_upstream

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXPERIMENTS = sorted((ROOT / "configs").glob("*.json"))
NODE_FILES = sorted((ROOT / "configs" / "nodes").glob("*.json"))


def _validator(name: str) -> Draft202012Validator:
    schema = json.loads((DOCS / name).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


EXPERIMENT = _validator(reference.EXPERIMENT_SCHEMA)
NODE = _validator(reference.NODE_SCHEMA)


def _errors(validator: Draft202012Validator, data: Any) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(data)]


def _write(tmp_path: Path, data: Any, name: str = "exp.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", sorted(reference.generated()))
def test_the_committed_files_are_what_the_schema_generates(name):
    path = DOCS / name
    assert path.is_file(), f"{path} is missing; regenerate: {reference.COMMAND}"
    assert path.read_text(encoding="utf-8") == reference.generated()[name], (
        f"{path} differs from fed_a2v/config/schema.py; regenerate: {reference.COMMAND}")


def test_check_and_write(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        assert reference.main(["--check", "--docs", str(tmp_path)]) == 1
    assert all(name in caplog.text for name in reference.generated(tmp_path))
    assert reference.COMMAND in caplog.text
    assert reference.main(["--write", "--docs", str(tmp_path)]) == 0
    assert reference.main(["--check", "--docs", str(tmp_path)]) == 0
    (tmp_path / reference.NODE_SCHEMA).write_text("{}\n", encoding="utf-8")
    assert reference.stale(tmp_path) == [tmp_path / reference.NODE_SCHEMA]


def _dataclasses() -> list[type]:
    return [Config, NodeConfig, *(tp for _, tp in reference._sections())]


@pytest.mark.parametrize("cls", _dataclasses(), ids=lambda c: c.__name__)
def test_every_field_has_a_doc(cls):
    for f in dataclasses.fields(cls):
        assert str(f.metadata.get("doc", "")).strip(), f"{cls.__name__}.{f.name} has no doc"


def test_the_reference_has_a_row_per_key():
    text = (DOCS / reference.REFERENCE).read_text(encoding="utf-8")
    for section, cls in reference._sections():
        for f in dataclasses.fields(cls):
            assert f"| `{section.name}.{f.name}` |" in text
    for f in dataclasses.fields(NodeConfig):
        assert f"| `{f.name}` |" in text


def test_keys_left_out_of_the_schemas_mark_upstream_files():
    for path in reference.UPSTREAM_ONLY:
        section, key = path.split(".")
        assert is_upstream({section: {key: "FedA2V"}})
        assert key not in EXPERIMENT.schema["properties"][section]["properties"]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_shipped_experiments_validate(path):
    raw = json.loads(path.read_text(encoding="utf-8"))
    if is_upstream(raw):
        pytest.skip(f"{path.name} is in upstream's format (federation.algorithm or a model "
                    "section): translated by the loader, not described by the JSON Schema")
    assert _errors(EXPERIMENT, raw) == []
    load_config(path)


def test_the_quickstart_is_shipped():
    assert ROOT / "configs" / "quickstart.json" in EXPERIMENTS


@pytest.mark.parametrize("path", NODE_FILES, ids=lambda p: p.name)
def test_shipped_node_files_validate(path):
    assert _errors(NODE, json.loads(path.read_text(encoding="utf-8"))) == []
    load_node_config(path)


def test_defaults_validate():
    assert _errors(EXPERIMENT, Config().to_dict()) == []
    assert _errors(NODE, dataclasses.asdict(NodeConfig())) == []


# Each is refused by the loader for a type, a choice, a range, a pattern or an unknown key.
BAD_EXPERIMENTS = [
    {"federation": {"global_rounds": 0}},
    {"federation": {"join_ratio": 0}},
    {"federation": {"strategy": "FedAvgX"}},
    {"federation": {"strategy_options": {"eta": "big"}}},
    {"training": {"batch_size": "16"}},
    {"training": {"learning_rate": 0}},
    {"experiment": {"device": "gpu"}},
    {"experiment": {"seed": 1.5}},
    {"experiment": {"nmae": "x"}},
    {"dataset": {"train_ratio": 1.5}},
    {"dataset": {"name": "audioset"}},
    {"dataset": {"use_folds": 1}},
    {"dataset": {"train_folds": [1, "2"]}},
    {"dataset": {"paths": {"esc": "/data"}}},
    {"feda2v": {"diffusion_type": "dalle"}},
    {"feda2v": {"clip_adapter_learning_rate_schedule": "linear"}},
    {"feda2v": {"adapter_dropout": 0.95}},
    {"wandb": {"mode": "cloud"}},
    {"privacy": {"delta": 0}},
    {"federation": []},
    {"nodes": {"a": {"selected_classes": ["dog"]}}},
    {"nodes": {"0": {"selected_clases": ["dog"]}}},
    {"nodes": {"0": {"batch_size": 0}}},
    {"models": {}},
    {"federation": {SCHEMA_KEY: "x"}},  # "$schema" belongs at the top only
]
BAD_NODES = [
    {"node_split_id": -1},
    {"dataset": "audioset"},
    {"device": "tpu"},
    {"batch_size": 0},
    {"use_folds": "yes"},
    {"selected_clases": ["dog"]},
]


@pytest.mark.parametrize("data", BAD_EXPERIMENTS, ids=json.dumps)
def test_what_the_loader_rejects_the_schema_rejects(tmp_path, data):
    with pytest.raises(ConfigError):
        load_config(_write(tmp_path, data))
    assert _errors(EXPERIMENT, data)


@pytest.mark.parametrize("data", BAD_NODES, ids=json.dumps)
def test_what_the_node_loader_rejects_the_node_schema_rejects(tmp_path, data):
    with pytest.raises(ConfigError):
        load_node_config(_write(tmp_path, data, "node.json"))
    assert _errors(NODE, data)


def test_schema_key_and_comments_load_and_validate(tmp_path):
    plain = {"federation": {"global_rounds": 2}, "nodes": {"0": {"selected_classes": ["dog"]}}}
    commented = {
        SCHEMA_KEY: "../docs/experiment.schema.json",
        "_comment": "a note", "description": "what this run is for",
        "federation": {"//": "two rounds", "global_rounds": 2},
        "nodes": {"_comment_0": "the first node", "0": {"comment": "dogs only",
                                                        "selected_classes": ["dog"]}},
    }
    assert _errors(EXPERIMENT, commented) == []
    assert load_config(_write(tmp_path, commented)) == load_config(_write(tmp_path, plain,
                                                                          "plain.json"))
    node = {SCHEMA_KEY: "../../docs/node.schema.json", "_comment": "kitchen",
            "selected_classes": ["dog"], "node_split_id": 0, "num_nodes": 2}
    assert _errors(NODE, node) == []
    assert load_node_config(_write(tmp_path, node, "node.json")) == NodeConfig(
        selected_classes=["dog"], node_split_id=0, num_nodes=2)

