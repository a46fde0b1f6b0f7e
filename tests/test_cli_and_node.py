"""`fed-a2v validate`, and how a node finds its own settings in simulation and deployment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from fed_a2v.cli import main
from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.schema import Config, NodeConfig
from fed_a2v.federation.node import identify, node_seed
from fed_a2v.federation.server import resolve_path

APP_DIR = Path(__file__).resolve().parent.parent


def context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(),
                   run_config={})


def test_validate_ok_prints_one_line(capsys) -> None:
    assert main(["validate", str(APP_DIR / "configs" / "quickstart.json")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "ok" in out[0] and "quickstart" in out[0]


def test_validate_error_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"federation": {"global_round": 3}}))
    done = subprocess.run([sys.executable, "-m", "fed_a2v.cli", "validate", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert str(bad) in done.stderr and "federation.global_round" in done.stderr
    assert "global_rounds" in done.stderr


def test_validate_checks_node_json_against_the_corpus(tmp_path: Path, capsys) -> None:
    from fed_a2v.data.builtin.synthetic import ensure_synthetic_corpus

    data = ensure_synthetic_corpus(tmp_path / "data", 0, 3, 10, 0.3, 16000)
    experiment = tmp_path / "exp.json"
    experiment.write_text(json.dumps({"dataset": {"path": str(data)}}))
    good = tmp_path / "node.json"
    good.write_text(json.dumps({"selected_classes": ["dog", "siren"], "num_nodes": 1}))
    assert main(["validate", str(experiment), "--node", str(good)]) == 0
    assert "train" in capsys.readouterr().out
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"selected_classes": ["dgo"]}))
    assert main(["validate", str(experiment), "--node", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert str(wrong) in err and "'dgo'" in err and "did you mean 'dog'" in err


@pytest.mark.parametrize("name", ["esc50", "csv"])
def test_validate_fails_for_a_corpus_that_is_not_on_disk(tmp_path: Path, capsys,
                                                         name: str) -> None:
    missing = tmp_path / "nowhere" / "esc50"
    experiment = tmp_path / "exp.json"
    experiment.write_text(json.dumps({"dataset": {"name": name, "path": str(missing)}}))
    assert main(["validate", str(experiment)]) == 2
    err = capsys.readouterr().err
    assert str(experiment) in err and "'dataset.path'" in err and str(missing) in err


def test_validate_fails_for_a_node_dataset_path_that_is_not_on_disk(tmp_path: Path,
                                                                    capsys) -> None:
    from fed_a2v.data.builtin.synthetic import ensure_synthetic_corpus

    data = ensure_synthetic_corpus(tmp_path / "data", 0, 3, 10, 0.3, 16000)
    experiment = tmp_path / "exp.json"
    experiment.write_text(json.dumps({"dataset": {"name": "esc50", "path": str(data)}}))
    node = tmp_path / "node.json"
    node.write_text(json.dumps({"dataset_path": str(tmp_path / "elsewhere")}))
    assert main(["validate", str(experiment), "--node", str(node)]) == 2
    err = capsys.readouterr().err
    assert str(node) in err and "'dataset_path'" in err and str(tmp_path / "elsewhere") in err


def test_validate_accepts_a_builtin_corpus_not_generated_yet(tmp_path: Path, capsys) -> None:
    experiment = tmp_path / "exp.json"
    experiment.write_text(json.dumps({"dataset": {"path": str(tmp_path / "later")}}))
    assert main(["validate", str(experiment)]) == 0
    assert "ok" in capsys.readouterr().out and not (tmp_path / "later").exists()


def test_simulated_node_takes_the_entry_of_its_partition() -> None:
    config = Config(nodes={"1": NodeConfig(selected_classes=["dog"])})
    ident = identify(context({"partition-id": 1, "num-partitions": 3}), config)
    assert ident.settings.selected_classes == ["dog"]
    assert (ident.index, ident.num_nodes) == (1, 3)
    # A partition without an entry holds all classes of its shard.
    other = identify(context({"partition-id": 2, "num-partitions": 3}), config)
    assert other.settings == NodeConfig() and other.index == 2


def test_deployed_node_reads_its_own_json(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    path.write_text(json.dumps({"excluded_classes": ["rain"], "node_split_id": 1,
                                "num_nodes": 2, "batch_size": 4}))
    ident = identify(context({"node-config": str(path)}), Config())
    assert ident.settings.excluded_classes == ["rain"] and ident.settings.batch_size == 4
    assert (ident.index, ident.num_nodes) == (1, 2)
    assert (ident.name, ident.key) == ("node 1", "shard 1/2")  # the key seeds as before
    path.write_text(json.dumps({"batchsize": 4}))
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        identify(context({"node-config": str(path)}), Config())


def test_deployed_node_without_split_keys_uses_its_whole_corpus(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    path.write_text(json.dumps({"batch_size": 4}))
    ident = identify(context({"node-config": str(path)}), Config())
    assert (ident.index, ident.num_nodes) == (0, 1)


@pytest.mark.parametrize("keys,missing", [({"num_nodes": 3}, "node_split_id"),
                                          ({"node_split_id": 1}, "num_nodes")])
def test_deployed_node_with_half_the_split_keys_is_an_error(tmp_path: Path, keys: dict,
                                                            missing: str, capsys) -> None:
    path = tmp_path / "node.json"
    path.write_text(json.dumps(keys))
    with pytest.raises(ConfigError) as info:
        identify(context({"node-config": str(path)}), Config())
    assert str(path) in str(info.value) and f"'{missing}' is missing" in str(info.value)
    experiment = tmp_path / "exp.json"
    experiment.write_text(json.dumps({"dataset": {"path": str(tmp_path / "data")}}))
    assert main(["validate", str(experiment), "--node", str(path)]) == 2
    assert f"'{missing}' is missing" in capsys.readouterr().err


def test_node_seeds_never_collide() -> None:
    keys = [f"shard {i}/1000" for i in range(1000)]
    seeds = {node_seed(seed, rnd, key) for seed in range(3) for rnd in range(1, 51)
             for key in keys}
    assert len(seeds) == 3 * 50 * 1000
    assert all(0 <= s < 2**63 for s in seeds)
    assert node_seed(0, 1, keys[0]) == node_seed(0, 1, keys[0])  # reproducible


def test_every_deployed_node_has_its_own_seed(tmp_path: Path) -> None:
    """Split ids, else the node JSON's path, else Flower's node id tell nodes apart."""
    contexts = [context({"partition-id": 1, "num-partitions": 3})]
    for i, keys in enumerate([{"node_split_id": 0, "num_nodes": 2},
                              {"node_split_id": 1, "num_nodes": 2}, {}, {}]):
        path = tmp_path / f"node-{i}.json"
        path.write_text(json.dumps(keys))
        contexts.append(context({"node-config": str(path)}))
    contexts.append(context({}))  # a SuperNode without --node-config
    idents = [identify(c, Config()) for c in contexts]
    assert len({node_seed(0, 1, ident.key) for ident in idents}) == len(idents)
    assert idents[-1].key == "flower node 7" and (idents[-1].index, idents[-1].num_nodes) == (0, 1)


def test_relative_config_path_falls_back_to_the_app_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = "configs/quickstart.json"
    assert resolve_path(relative, APP_DIR) == APP_DIR / relative
    (tmp_path / "configs").mkdir()
    (tmp_path / relative).write_text("{}")
    assert resolve_path(relative, APP_DIR) == tmp_path / relative
