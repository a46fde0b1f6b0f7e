"""Config loading: defaults, the seed analysis's recommended configs, and helpful errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.load import load_config, load_node_config
from fed_a2v.config.schema import Config, NodeConfig
from fed_a2v.config.validate import config_from_dict

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

# The two JSON blocks under "Configurazione Raccomandata" of the upstream batch-size analysis
# (batch-size-analysis.it.md, which this repository does not hold), same keys and values,
# whitespace collapsed. The tests read only these copies.
SEED_BATCH_16 = (
    '{"training": {"batch_size": 16, "optimizer": "AdamW", "learning_rate": 0.001}, '
    '"feda2v": {"clip_adapter_learning_rate": 3e-4, "clip_adapter_weight_decay": 1e-4, '
    '"clip_adapter_learning_rate_schedule": true, "t5_adapter_learning_rate": 1e-3, '
    '"t5_adapter_weight_decay": 1e-4, "t5_adapter_learning_rate_schedule": true, '
    '"use_stratified_batching": true}}'
)
SEED_BATCH_1 = (
    '{"training": {"batch_size": 1, "optimizer": "AdamW", "learning_rate": 0.001}, '
    '"feda2v": {"clip_adapter_learning_rate": 1e-3, "clip_adapter_weight_decay": 1e-4, '
    '"t5_adapter_learning_rate": 1e-3, "t5_adapter_weight_decay": 1e-4}}'
)


def _write(tmp_path: Path, data, name: str = "exp.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _error(tmp_path: Path, data) -> str:
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    return message


def test_empty_config_gives_defaults():
    config = config_from_dict({})
    assert dataclasses.replace(config, federation=Config().federation) == Config()
    # Unset counts are resolved on load: 3 nodes without entries, a quorum of 2.
    assert (config.federation.num_clients, config.federation.min_clients) == (3, 2)
    assert config.training.batch_size == 16
    assert config.training.optimizer == "AdamW"
    assert config.feda2v.t5_max_length == 17
    assert config.feda2v.audio_model_name.startswith("builtin:")
    assert config.nodes == {}
    assert config.adapter_lr("clip") == config.training.learning_rate
    assert config.adapter_weight_decay("t5") == config.training.weight_decay
    assert config.adapter_schedule("clip") == "constant"
    assert config.node(3) == NodeConfig()


def test_seed_recommended_batch_16_config_loads(tmp_path):
    config = load_config(_write(tmp_path, SEED_BATCH_16))
    assert config.training.batch_size == 16
    assert config.adapter_lr("clip") == 3e-4
    assert config.adapter_lr("t5") == 1e-3
    assert config.adapter_weight_decay("clip") == 1e-4
    assert config.adapter_schedule("clip") == "cosine"
    assert config.adapter_schedule("t5") == "cosine"
    assert config.feda2v.use_stratified_batching is True


def test_seed_recommended_batch_1_config_loads(tmp_path):
    config = load_config(_write(tmp_path, SEED_BATCH_1))
    assert config.training.batch_size == 1
    assert config.adapter_lr("clip") == 1e-3
    assert config.adapter_schedule("t5") == "constant"
    assert config.feda2v.use_stratified_batching is False


def test_schedule_accepts_names():
    config = config_from_dict({"feda2v": {"clip_adapter_learning_rate_schedule": "constant",
                                          "t5_adapter_learning_rate_schedule": "cosine"}})
    assert config.adapter_schedule("clip") == "constant"
    assert config.adapter_schedule("t5") == "cosine"
    with pytest.raises(ConfigError, match="cosine"):
        config_from_dict({"feda2v": {"t5_adapter_learning_rate_schedule": "cosin"}})


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.json")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    assert isinstance(load_config(path), Config)


def test_shipped_configs_exist():
    assert (CONFIGS / "quickstart.json").exists()


def test_unknown_key_suggests_spelling(tmp_path):
    message = _error(tmp_path, {"training": {"batchsize": 8}})
    assert "training.batchsize" in message
    assert "did you mean 'batch_size'" in message


def test_unknown_section(tmp_path):
    message = _error(tmp_path, {"trainig": {}})
    assert "trainig" in message and "did you mean 'training'" in message


def test_wrong_type_names_key_and_type(tmp_path):
    message = _error(tmp_path, {"training": {"batch_size": "16"}})
    assert "training.batch_size" in message
    assert "integer" in message


def test_section_must_be_an_object(tmp_path):
    message = _error(tmp_path, {"training": [1, 2]})
    assert "training" in message and "object" in message


@pytest.mark.parametrize("section,key,value,bound", [
    ("training", "batch_size", 0, "1"),
    ("federation", "join_ratio", 1.5, "1.0"),
    ("federation", "join_ratio", 0, "0.0"),
    ("training", "learning_rate", -0.1, "0.0"),
    ("feda2v", "adapter_dropout", 0.95, "0.9"),
    ("feda2v", "retrieval_loss_weight", -0.5, "0.0"),
    ("feda2v", "retrieval_temperature", 0, "0.0"),
])
def test_out_of_range_names_key_and_bound(tmp_path, section, key, value, bound):
    message = _error(tmp_path, {section: {key: value}})
    assert f"{section}.{key}" in message
    assert bound in message


def test_bad_choice_lists_allowed_values(tmp_path):
    message = _error(tmp_path, {"dataset": {"name": "esc5"}})
    assert "dataset.name" in message
    assert '"synthetic"' in message and '"esc50"' in message
    assert "did you mean 'esc50'" in message


def test_malformed_json_reports_line_and_column(tmp_path):
    text = '{\n  "training": {\n    "batch_size": 16,\n  }\n}\n'  # trailing comma on line 3
    message = _error(tmp_path, text)
    assert "line 4" in message and "column 3" in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.json")


def test_top_level_must_be_an_object(tmp_path):
    message = _error(tmp_path, "[1, 2]")
    assert "object" in message


def test_bool_is_not_an_int(tmp_path):
    message = _error(tmp_path, {"training": {"batch_size": True}})
    assert "training.batch_size" in message


def test_int_is_accepted_for_a_float():
    config = config_from_dict({"training": {"learning_rate": 1}})
    assert config.training.learning_rate == 1.0
    assert isinstance(config.training.learning_rate, float)


def test_list_item_types_are_checked(tmp_path):
    message = _error(tmp_path, {"dataset": {"train_folds": [1, "2"]}})
    assert "dataset.train_folds" in message and "list" in message


def test_nodes_load():
    config = config_from_dict({"nodes": {
        "0": {"selected_classes": ["dog", "rooster"], "train_folds": [1, 2, 3, 4],
              "test_folds": [5]},
        "1": {"excluded_classes": ["dog"], "node_split_id": 1, "num_nodes": 2},
    }})
    assert config.node(0).selected_classes == ["dog", "rooster"]
    assert config.node(0).test_folds == [5]
    assert config.node(1).excluded_classes == ["dog"]
    assert config.node(1).node_split_id == 1
    assert config.node(2) == NodeConfig()


def test_node_unknown_key_names_its_path(tmp_path):
    message = _error(tmp_path, {"nodes": {"0": {"selected_class": ["dog"]}}})
    assert "nodes.0.selected_class" in message
    assert "did you mean 'selected_classes'" in message


def test_node_id_must_be_a_number(tmp_path):
    message = _error(tmp_path, {"nodes": {"first": {}}})
    assert "nodes.first" in message


def test_selected_and_excluded_classes_together_rejected(tmp_path):
    message = _error(tmp_path, {"nodes": {"2": {"selected_classes": ["dog"],
                                                "excluded_classes": ["cow"]}}})
    assert "nodes.2" in message
    assert "selected_classes" in message and "excluded_classes" in message


def test_node_split_id_must_be_below_num_nodes(tmp_path):
    message = _error(tmp_path, {"nodes": {"0": {"node_split_id": 2, "num_nodes": 2}}})
    assert "node_split_id" in message


def test_min_clients_above_num_clients_rejected(tmp_path):
    message = _error(tmp_path, {"federation": {"num_clients": 2, "min_clients": 3}})
    assert "min_clients" in message and "num_clients" in message


def test_node_config_file(tmp_path):
    path = _write(tmp_path, {"selected_classes": ["dog"], "node_split_id": 1, "num_nodes": 3,
                             "dataset_path": "/data/esc50", "device": "cpu"}, "node.json")
    node = load_node_config(path)
    assert node == NodeConfig(selected_classes=["dog"], node_split_id=1, num_nodes=3,
                              dataset_path="/data/esc50", device="cpu")
    # Written the way upstream writes a nodes entry: comment keys, the dataset in capitals.
    path = _write(tmp_path, {"dataset": "VEGAS", "_comment": "the kitchen node",
                             "comment": "two classes", "selected_classes": ["dog", "drum"]},
                  "upstream-node.json")
    assert load_node_config(path) == NodeConfig(dataset="vegas", selected_classes=["dog", "drum"])


def test_node_config_file_errors(tmp_path):
    path = _write(tmp_path, {"selected_clases": ["dog"]}, "node.json")
    with pytest.raises(ConfigError) as info:
        load_node_config(path)
    assert str(path) in str(info.value)
    assert "selected_clases" in str(info.value)
    assert "did you mean 'selected_classes'" in str(info.value)
    path = _write(tmp_path, {"node_split_id": -1}, "node.json")
    with pytest.raises(ConfigError, match="node_split_id"):
        load_node_config(path)


def test_unicode_digit_node_id_is_a_config_error(tmp_path):
    _error(tmp_path, {"nodes": {"²": {}}})


def test_nan_learning_rate_rejected(tmp_path):
    _error(tmp_path, '{"training": {"learning_rate": NaN}}')
