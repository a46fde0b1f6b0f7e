"""Upstream's config files read as they are: the key table, translation, `--set`, `convert`.

The fixtures under tests/fixtures/upstream/ are ours, written in upstream's format; together
they use every key of the table (fed_a2v/config/upstream_keys.py).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from fed_a2v.cli import main
from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.key_paths import is_metadata, pattern_of
from fed_a2v.config.load import load_config, resolve
from fed_a2v.config.overrides import apply_overrides, parse_override
from fed_a2v.config.reference import COMMAND, TABLE_BEGIN, TABLE_END, markdown_table
from fed_a2v.config.upstream_keys import KEYS, METADATA, TABLE
from fed_a2v.federation.server import config_for_run

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "upstream"
ALL = sorted(FIXTURES.glob("*.json"))


def _paths(data: dict, prefix: str = "") -> set[str]:
    """Every key path of a raw config, nodes as `nodes.*.key`, metadata left out."""
    out = set()
    for key, value in data.items():
        if is_metadata(key) or (prefix == "nodes." and isinstance(value, str)):
            continue
        path = f"{prefix}{key}"
        if prefix == "nodes.":
            out |= {f"nodes.*.{k}" for k in value if not is_metadata(k)}
        elif isinstance(value, dict) and (not prefix or path == "nodes"):
            out |= _paths(value, f"{path}.")
        else:
            out.add(path)
    return out


def _write(tmp_path: Path, data: dict, name: str = "exp.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _upstream(**sections) -> dict:
    base = {"federation": {"algorithm": "FedA2V"}, "model": {"backbone": "a2v"},
            "dataset": {"name": "ESC50"}, "nodes": {"0": {"dataset": "ESC50"}}}
    for name, body in sections.items():
        base[name] = {**base.get(name, {}), **body}
    return base


def test_the_fixtures_use_every_key_of_the_table_and_no_other():
    used = set().union(*(_paths(json.loads(f.read_text())) for f in ALL))
    assert sorted(used - set(TABLE)) == []  # a fixture key the table lacks
    assert sorted(set(TABLE) - used) == []  # a table row no fixture exercises
    assert len(TABLE) == 181  # 173 keys of upstream files and defaults, 8 read only in code


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.stem)
def test_every_fixture_loads_in_the_upstream_profile(path):
    config, t = resolve(path, quiet=True)
    assert t.upstream
    assert config.federation.num_clients == len(config.nodes)
    assert config.dataset.partition == "classes" and config.dataset.use_folds is False


def test_upstream_defaults_and_mappings():
    esc50, _ = resolve(FIXTURES / "esc50_3n_avg.json", quiet=True)
    assert esc50.experiment.device == "cuda:1" and esc50.experiment.seed == 7
    assert esc50.federation.num_clients == 3  # the file says 5: the nodes count, as upstream
    assert esc50.federation.min_clients == 3
    assert esc50.dataset.name == "esc50" and esc50.feda2v.adapter_aggregation_mode == "avg"
    assert (esc50.wandb.project, esc50.wandb.entity, esc50.wandb.mode) == (
        "esc50-study", "my-team", "offline")
    assert esc50.feda2v.clip_model_name == "black-forest-labs/FLUX.1-schnell"
    assert esc50.feda2v.t5_model_subfolder == "text_encoder_2"
    assert esc50.feda2v.audio_model_name == "MIT/ast-finetuned-audioset-10-10-0.4593"

    vegas, _ = resolve(FIXTURES / "vegas_2n_sa.json", quiet=True)
    assert vegas.experiment.device == "cpu" and vegas.experiment.seed == 0  # -1: unseeded
    assert vegas.federation.min_clients == 1  # max(1, round(0.5 x 2))
    assert vegas.training.optimizer == "AdamW"
    assert vegas.feda2v.diffusion_type == "sd"
    assert (vegas.feda2v.clip_model_name, vegas.feda2v.clip_model_subfolder) == (
        "runwayml/stable-diffusion-v1-5", "text_encoder")
    assert vegas.feda2v.adapter_aggregation_mode == "none"
    assert vegas.feda2v.adapter_load_checkpoint is False  # standalone nodes start fresh
    assert vegas.feda2v.adapter_dropout == 0.3  # the nodes differ: the largest
    assert vegas.nodes["0"].num_samples_per_class == 30  # legacy alias num_samples
    assert vegas.wandb.disabled is False and vegas.wandb.project == "FedA2V"
    assert (vegas.dataset.train_ratio, vegas.dataset.val_ratio, vegas.dataset.test_ratio) == (
        0.7, 0.15, 0.15)
    assert vegas.training.batch_size == 4 and vegas.federation.eval_gap == 1

    mixed, _ = resolve(FIXTURES / "mixed_generators_kd.json", quiet=True)
    assert mixed.dataset.name == "mixed"
    assert [n.dataset for n in mixed.nodes.values()] == ["esc50", "vegas", "vggsound"]
    vgg = mixed.nodes["2"]
    assert (vgg.train_ratio, vgg.val_ratio, vgg.test_ratio) == (0.7, 0.1, 0.2)
    assert mixed.feda2v.adapter_aggregation_mode == "kd"
    assert (mixed.feda2v.kd_training_epochs, mixed.feda2v.kd_learning_rate,
            mixed.feda2v.kd_samples_per_class) == (10, 0.001, 100)  # synthetic_*: 100 wins
    assert mixed.feda2v.generator_type == "gaussian"  # upstream's "vae"
    assert mixed.feda2v.generator_load_checkpoint is True
    assert mixed.feda2v.generator_training_mode is False
    assert (mixed.feda2v.generator_checkpoint_dir, mixed.feda2v.generator_checkpoint_base_name) \
        == ("checkpoints/generators/mixed", "vae_group")
    assert mixed.feda2v.generator_class_groups == {"animals": ["dog"], "machines": ["chainsaw"]}
    assert mixed.feda2v.generator_granularity == "per_class"  # the nodes differ
    assert mixed.training.batch_size == 2 and mixed.training.learning_rate == 0.005
    assert mixed.feda2v.clip_adapter_learning_rate == 1e-4  # upstream's defaults
    assert mixed.feda2v.t5_adapter_weight_decay == 1e-3
    assert mixed.federation.local_epochs == 1 and mixed.experiment.device == "auto"


def test_the_nodes_decide_the_corpus_whatever_dataset_name_says(tmp_path):
    data = _upstream(dataset={"name": "VEGAS"}, nodes={"1": {"dataset": "ESC50"}})
    assert load_config(_write(tmp_path, data)).dataset.name == "esc50"
    data = _upstream(dataset={"name": "cifar10"}, nodes={"1": {}})
    with pytest.raises(ConfigError, match=r"'dataset.name' \(\"cifar10\"\) names no corpus"):
        load_config(_write(tmp_path, data))
    data = _upstream(nodes={"1": {"dataset": "AudioSet"}})
    with pytest.raises(ConfigError, match=r"'nodes.1.dataset': \"AudioSet\" is no corpus"):
        load_config(_write(tmp_path, data))


def test_a_file_without_a_global_diffusion_type_takes_its_nodes(tmp_path):
    data = _upstream(nodes={"0": {"dataset": "ESC50", "diffusion_type": "flux"}})
    assert load_config(_write(tmp_path, data)).feda2v.diffusion_type == "flux"
    assert load_config(_write(tmp_path, _upstream())).feda2v.diffusion_type == "sd"


def test_metadata_strings_under_nodes_are_not_nodes():
    config = load_config(FIXTURES / "mixed_generators_kd.json")
    assert sorted(config.nodes) == ["0", "1", "2"]
    assert config.federation.num_clients == 3


def test_metadata_keys_anywhere_are_ignored(tmp_path):
    data = _upstream(experiment={"description": "d", "goal": "g", "notes": "n", "//": "c"},
                     feda2v={"_comment_x": "c"})
    data["nodes"]["0"].update({"_available_classes": "dog", "comment": "c"})
    data.update({"_comment_top": "c", "comments": {"a": 1}, "_instructions": {"s": "x"}})
    _, t = resolve(_write(tmp_path, data), quiet=True)
    assert t.metadata == 10 and not t.unsupported


def test_one_warning_line_names_only_the_keys_that_ask(caplog):
    with caplog.at_level(logging.WARNING, logger="fed_a2v.config.schema"):
        load_config(FIXTURES / "esc50_3n_avg.json")
    # optimize_memory_usage is always silent; the image keys are silent with frequency 0.
    assert caplog.records == []
    with caplog.at_level(logging.WARNING, logger="fed_a2v.config.schema"):
        load_config(FIXTURES / "vegas_2n_sa.json")
    (record,) = caplog.records
    line = record.getMessage()
    assert "\n" not in line and "not supported, ignored" in line
    for named in ("experiment.runs=3", "training.optimizer=Adam", "nodes.1.adapter_dropout=0.3",
                  "feda2v.adapter_load_checkpoint"):
        assert named in line
    for silent in ("model_aggregation", "text_losses_summed", "optimize_memory_usage",
                   "adapter_aggregation_method", "use_text_loss", "mode"):
        assert f"{silent}" not in line.replace("adapter_aggregation_mode", "")


def test_the_warning_groups_many_keys_of_one_reason():
    _, t = resolve(FIXTURES / "mixed_generators_kd.json", quiet=True)
    line = t.warning_line()
    assert "global_model_train* (5 keys:" in line and "not on the server, not from text" in line
    assert "the server-side generator never trained" in line
    assert "rewind" not in line and "fedgfe" not in line and "img_pipe_name" not in line
    # Generators and KD are FedA2V's own now: no generator or kd key is named.
    named = [key for key, _, _ in t.unsupported]
    assert not [k for k in named if "generator" in k.split(".")[-1] and "global" not in k
                or k.split(".")[-1].startswith("kd_") or "synthetic" in k]
    body = line.split(": not supported, ignored", 1)[1]  # the file's name has "kd" in it
    assert "adapter_aggregation_mode" not in body and "kd" not in body


def test_generator_and_kd_keys_translate_to_feda2v_own(tmp_path):
    data = _upstream(feda2v={
        "diffusion_type": "flux", "adapter_aggregation_mode": "kd", "use_generator": True,
        "generator_type": "gan", "generator_only_mode": True, "generator_training_mode": False,
        "use_pretrained_generators": True, "synthetic_samples_per_class": 12,
        "generator_class_groups": None, "generator_training_epochs": 100,
        "generator_training_sequence_length": 1214},
        nodes={"0": {"dataset": "ESC50", "generator_granularity": "unified",
                     "generator_train_classes": ["dog"]},
               "1": {"dataset": "ESC50", "generator_granularity": "unified"}})
    config, t = resolve(_write(tmp_path, data), quiet=True)
    fa = config.feda2v
    assert not t.unsupported
    assert fa.adapter_aggregation_mode == "kd" and fa.generator_type == "gaussian"
    assert fa.generator_training_mode is True  # generator_only_mode wins over the false
    assert fa.generator_load_checkpoint is True and fa.kd_samples_per_class == 12
    assert fa.generator_granularity == "unified" and fa.generator_class_groups == {}
    why = {c.key: (c.to, c.result, c.why) for c in t.mapped}
    assert why["feda2v.generator_type"][:2] == ("feda2v.generator_type", "gaussian")
    assert "low-rank Gaussians fitted in closed form" in why["feda2v.generator_type"][2]
    assert why["feda2v.generator_only_mode"][:2] == ("feda2v.generator_training_mode", True)
    assert why["feda2v.use_pretrained_generators"][:2] == (
        "feda2v.generator_load_checkpoint", True)
    assert why["feda2v.synthetic_samples_per_class"][:2] == ("feda2v.kd_samples_per_class", 12)
    assert why["nodes.1.generator_granularity"][:2] == ("feda2v.generator_granularity",
                                                        "unified")
    assert why["feda2v.use_generator"][0] == "" and "closed form" in why[
        "feda2v.generator_training_epochs"][2]

    # Nodes that differ: per_class for every node, the values named; "auto" asks nothing.
    data["nodes"]["1"]["generator_granularity"] = "per_group"
    data["feda2v"].update(synthetic_samples_per_class="auto", generator_only_mode=False)
    config, t = resolve(_write(tmp_path, data), quiet=True)
    assert config.feda2v.generator_granularity == "per_class" and not t.unsupported
    assert config.feda2v.kd_samples_per_class == 32 and config.feda2v.generator_training_mode \
        is False
    (note,) = [c.why for c in t.mapped if c.key == "nodes.1.generator_granularity"]
    assert "the nodes differ (0: unified, 1: per_group): per_class" in note
    assert [k for k, _, _ in t.dropped if "synthetic" in k] == [
        "feda2v.synthetic_samples_per_class"]


def test_strict_turns_the_named_keys_into_an_error():
    with pytest.raises(ConfigError) as info:
        load_config(FIXTURES / "vegas_2n_sa.json", strict=True)
    assert "--strict" in str(info.value) and "experiment.runs=3" in str(info.value)
    load_config(FIXTURES / "esc50_3n_avg.json", strict=True)  # nothing asked: no error


def test_an_unknown_key_is_still_an_error_with_a_suggestion(tmp_path):
    data = _upstream(feda2v={"generate_node_images_frequency": 1})
    with pytest.raises(ConfigError, match="did you mean 'generate_nodes_images_frequency'"):
        load_config(_write(tmp_path, data))
    data = _upstream()
    data["nodes"]["0"]["selected_clases"] = ["dog"]
    with pytest.raises(ConfigError, match=r"'nodes.0.selected_clases'.*selected_classes"):
        load_config(_write(tmp_path, data))
    data = {**_upstream(), "modle": {}}
    with pytest.raises(ConfigError, match="did you mean 'model'"):
        load_config(_write(tmp_path, data))
    with pytest.raises(ConfigError, match="unknown key 'experiment.gaol'"):
        load_config(_write(tmp_path, {"experiment": {"gaol": "x"}}))


def test_upstream_fold_lists_are_shifted_by_one(caplog):
    with caplog.at_level(logging.WARNING, logger="fed_a2v.config.schema"):
        config = load_config(FIXTURES / "esc50_3n_avg.json")
    node0, node2 = config.nodes["0"], config.nodes["2"]
    assert (node0.train_folds, node0.test_folds) == ([1, 2, 3, 4], [5])
    assert (node2.use_folds, node2.train_folds, node2.val_folds, node2.test_folds) == (
        True, [1, 2, 3], [4], [5])
    assert caplog.records == []  # lists with a 0 are unambiguous


def test_fold_lists_without_a_zero_warn_once_how_they_were_read(caplog):
    with caplog.at_level(logging.WARNING, logger="fed_a2v.config.schema"):
        config = load_config(FIXTURES / "esc50_folds_ambiguous.json")
    assert (config.nodes["0"].train_folds, config.nodes["0"].test_folds) == ([2, 3, 4], [5])
    (record,) = caplog.records
    assert "nodes.0.train_folds=[1, 2, 3]" in record.getMessage()
    assert "upstream fold k = corpus fold k+1" in record.getMessage()


def test_native_files_keep_their_defaults_and_fold_numbers(tmp_path):
    data = {"dataset": {"name": "ESC50", "train_folds": [1, 2, 3]},
            "feda2v": {"project": "p", "_comment": "x"}, "nodes": {"0": {"test_folds": [5]}}}
    config, t = resolve(_write(tmp_path, data), quiet=True)
    assert not t.upstream
    assert config.dataset.name == "esc50" and config.dataset.train_folds == [1, 2, 3]
    assert config.nodes["0"].test_folds == [5] and config.wandb.project == "p"
    assert config.training.batch_size == 16 and config.dataset.partition == "nodes"


@pytest.mark.parametrize("item, expected", [
    ("federation.global_rounds=3", ("federation.global_rounds", 3)),
    ("training.learning_rate=1e-4", ("training.learning_rate", 1e-4)),
    ("wandb.disabled=true", ("wandb.disabled", True)),
    ("wandb.entity=null", ("wandb.entity", None)),
    ('nodes.0.selected_classes=["dog", "cat"]', ("nodes.0.selected_classes", ["dog", "cat"])),
    ("dataset.path=/data/ESC-50", ("dataset.path", "/data/ESC-50")),
    ('experiment.name="3"', ("experiment.name", "3")),
    ("experiment.name=a=b", ("experiment.name", "a=b")),
])
def test_set_values_are_json_when_they_parse(item, expected):
    assert parse_override(item) == expected


@pytest.mark.parametrize("item", ["federation.global_rounds", "=3", "federation..x=1"])
def test_set_needs_key_equals_value(item):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override(item)


def test_set_creates_sections_and_rejects_unknown_keys():
    raw = apply_overrides({}, ["dataset.paths.vegas=/data/VEGAS", "nodes.3.dataset=VEGAS"])
    assert raw == {"dataset": {"paths": {"vegas": "/data/VEGAS"}}, "nodes": {"3": {
        "dataset": "VEGAS"}}}
    with pytest.raises(ConfigError, match=r"--set federation.global_round=3: unknown key "
                                          r"'federation.global_round' \(did you mean"):
        apply_overrides({}, ["federation.global_round=3"])


def test_set_overrides_a_file_before_translation(tmp_path):
    config = load_config(FIXTURES / "esc50_3n_avg.json", [
        "dataset.path=/data/ESC-50", "federation.global_rounds=3",
        'nodes.0.selected_classes=["dog"]', "nodes.0.train_folds=[0]"])
    assert config.dataset.path == "/data/ESC-50" and config.federation.global_rounds == 3
    assert config.nodes["0"].selected_classes == ["dog"] and config.nodes["0"].train_folds == [1]
    with pytest.raises(ConfigError, match="must be an integer"):
        load_config(FIXTURES / "esc50_3n_avg.json", ["federation.global_rounds=three"])


def test_the_run_config_set_key_applies_overrides(tmp_path):
    config = config_for_run({"config": str(FIXTURES / "vegas_2n_sa.json"),
                             "set": "federation.global_rounds=7 'dataset.path=/data/my VEGAS'"},
                            tmp_path)
    assert config.federation.global_rounds == 7 and config.dataset.path == "/data/my VEGAS"


@pytest.mark.parametrize("path", [*ALL, ROOT / "configs" / "quickstart.json",
                                  ROOT / "configs" / "esc50_flux.json"], ids=lambda p: p.stem)
def test_convert_round_trips(path, tmp_path, monkeypatch):
    out = tmp_path / "native.json"
    assert main(["convert", str(path), "--out", str(out)]) == 0
    native = json.loads(out.read_text())
    assert "model" not in native and "algorithm" not in native.get("federation", {})
    assert load_config(out) == load_config(path)
    notes = (tmp_path / "native.json.notes.md").read_text()
    assert notes.startswith(f"# {path} -> {out}")


def test_convert_keeps_the_defaults_that_differ_and_says_what_it_did(tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["convert", str(FIXTURES / "mixed_generators_kd.json"),
                 "--set", "federation.global_rounds=9"]) == 0
    # Without --out: <stem>.fed-a2v.json here, and its notes beside it.
    native = json.loads((tmp_path / "mixed_generators_kd.fed-a2v.json").read_text())
    assert "mixed_generators_kd.fed-a2v.json.notes.md" in capsys.readouterr().err
    assert native["dataset"]["partition"] == "classes" and native["dataset"]["use_folds"] is False
    assert native["federation"]["global_rounds"] == 9
    assert native["wandb"] == {"disabled": False, "project": "FedA2V"}
    notes = (tmp_path / "mixed_generators_kd.fed-a2v.json.notes.md").read_text()
    assert "`feda2v.project`" not in notes  # the fixture has none
    assert '- `nodes.1.dataset` = "VEGAS" -> "vegas"' in notes
    assert '- `feda2v.generator_type` = "vae" -> "gaussian": FedA2V\'s node generators are ' \
        "per-class low-rank Gaussians" in notes
    assert "- `feda2v.use_pretrained_generators` = true -> `feda2v.generator_load_checkpoint` " \
        "= true" in notes
    assert '`rewind.epochs` = 1: never read by upstream\'s FedA2V' in notes
    assert main(["convert", str(FIXTURES / "mixed_generators_kd.json"), "--out", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["dataset"]["name"] == "mixed"
    assert (tmp_path / "mixed_generators_kd.fed-a2v.notes.md").is_file()


def _notes_of(fixture: str, tmp_path: Path) -> str:
    out = tmp_path / f"{fixture}.native.json"
    assert main(["convert", str(FIXTURES / f"{fixture}.json"), "--out", str(out)]) == 0
    return (tmp_path / f"{out.name}.notes.md").read_text()


def test_convert_notes_name_the_files_own_values_and_each_change(tmp_path):
    notes = _notes_of("esc50_3n_avg", tmp_path)  # seed 7, num_clients 5, 3 nodes, cuda + "1"
    assert "- `federation.num_clients` = 5 -> 3: the file's 3 `nodes` entries decide" in notes
    assert '- `experiment.device` = "cuda" -> "cuda:1": with `experiment.device_id` = "1"' \
        in notes
    assert "- `nodes.0.train_folds` = [0, 1, 2, 3] -> [1, 2, 3, 4]: upstream numbers folds " \
        "from 0" in notes
    assert '- `feda2v.entity` = "my-team" -> `wandb.entity` = "my-team"' in notes
    assert "- `federation.min_clients` -> 3: max(1, round(join_ratio 1.0 x 3 nodes))" in notes
    assert '- `dataset.partition` -> "classes": upstream\'s default (FedA2V\'s own: "nodes")' \
        in notes
    # Rules that did not apply to this file are not listed: its seed is 7, kept as it is; its
    # train ratio is upstream's and FedA2V's default alike; it has no dropout per node.
    assert "`experiment.seed` =" not in notes and "unseeded" not in notes
    assert "dataset.train_ratio" not in notes and "adapter_dropout` =" not in notes
    assert "`federation.num_clients` -> 3" not in notes  # the file has the key: a change

    notes = _notes_of("vegas_2n_sa", tmp_path)  # seed -1, num_clients 2 = its 2 nodes
    assert "- `experiment.seed` = -1 -> 0: upstream's -1 means unseeded" in notes
    assert "federation.num_clients" not in notes  # 2 nodes, 2 clients: nothing changed
    assert "- `nodes.0.adapter_dropout` = 0.1 -> `feda2v.adapter_dropout` = 0.3: the nodes " \
        "differ (0.1, 0.3): the largest" in notes
    assert '- `training.optimizer` = "Adam": upstream built no adapter optimizer' in notes


def test_federation_diffusion_type_wins_wherever_it_stands(tmp_path):
    for order in (("federation", "feda2v"), ("feda2v", "federation")):
        data = {"federation": {"algorithm": "FedA2V", "diffusion_type": "flux"},
                "feda2v": {"diffusion_type": "sd"}, "model": {},
                "dataset": {"name": "ESC50"}, "nodes": {"0": {}}}
        config, t = resolve(_write(tmp_path, {k: data[k] for k in (*order, "model", "dataset",
                                                                   "nodes")}), quiet=True)
        assert config.feda2v.diffusion_type == "flux"
        assert any(c.key == "feda2v.diffusion_type" and c.result == "flux" for c in t.mapped)


def test_a_resolved_config_reads_back_as_itself(tmp_path):
    config = load_config(FIXTURES / "esc50_3n_avg.json")
    assert "algorithm" not in config.to_dict()["federation"]
    assert load_config(_write(tmp_path, config.to_dict())) == config


def test_the_doc_shows_the_table_of_the_code():
    doc = (ROOT / "docs" / "upstream-config.md").read_text()
    assert doc.split(TABLE_BEGIN, 1)[1].split(TABLE_END, 1)[0] == "\n" + markdown_table(), (
        f"regenerate: {COMMAND}")
    for row in KEYS:
        assert f"| `{row.path}` |" in doc
    assert sum(row.status == METADATA for row in KEYS) == 9


def test_cli_exit_codes(tmp_path, capsys):
    fixture = str(FIXTURES / "vegas_2n_sa.json")
    syn = ["--set", "dataset.name=synthetic", "--set", f"dataset.path={tmp_path / 'syn'}",
           "--set", "nodes.0.dataset=synthetic", "--set", "nodes.1.dataset=synthetic",
           "--set", 'nodes.0.selected_classes=["dog"]', "--set",
           'nodes.1.selected_classes=["dog"]']
    assert main(["validate", fixture, *syn]) == 0
    assert main(["validate", fixture, *syn, "--strict"]) == 2
    assert "--strict" in capsys.readouterr().err
    assert main(["validate", fixture, "--set", "nodes.0.datset=VEGAS"]) == 2
    assert "did you mean 'dataset'" in capsys.readouterr().err
    assert main(["validate", fixture, "--set", f"dataset.path={tmp_path / 'none'}"]) == 2


def test_the_check_script_reports_files_and_keys(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_upstream_configs.py"),
                             str(FIXTURES), "--pattern", "*.json"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"{len(ALL)} files: {len(ALL)} ok, 0 failed")
    assert "feda2v.global_model_train" in result.stdout and "generator_type" not in result.stdout
    bad = _write(tmp_path, _upstream(feda2v={"nope": 1}), "a2v_bad.json")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_upstream_configs.py"),
                             str(bad.parent)], capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "FAILED a2v_bad.json" in result.stdout


def test_pattern_of_names_nodes_by_star():
    assert pattern_of("nodes.12.dataset") == "nodes.*.dataset"
    assert pattern_of("feda2v.mode") == "feda2v.mode"


@pytest.mark.slow
def test_simulate_runs_an_upstream_file_and_records_it_natively(tmp_path, monkeypatch):
    """An upstream-format file, pointed at the built-in corpus and models with --set, runs; the
    run directory's config.json is FedA2V's format and reads back as the same experiment."""
    data = _upstream(
        experiment={"goal": "sim", "device": "cpu", "runs": 1, "seed": 3},
        federation={"num_clients": 9, "global_rounds": 2, "local_epochs": 2, "eval_gap": 1},
        training={"optimizer": "AdamW", "batch_size": 8},
        dataset={"name": "ESC50", "path": str(tmp_path / "data")},
        feda2v={"adapter_aggregation_mode": "avg", "generate_nodes_images_frequency": 0},
        nodes={"0": {"dataset": "synthetic", "selected_classes": ["dog", "rooster"]},
               "_comment": "the second node holds the other classes",
               "1": {"dataset": "synthetic", "excluded_classes": ["dog", "rooster"],
                     "val_ratio": 0.2}})
    path = _write(tmp_path, data, "upstream.json")
    sets = ["dataset.num_classes=4", "dataset.clips_per_class=20", "dataset.clip_seconds=1.0",
            f"experiment.output_dir={tmp_path / 'runs'}", "wandb.disabled=true",
            "feda2v.audio_model_name=builtin:tiny-ast", "feda2v.clip_model_name=builtin:tiny-clip",
            "feda2v.t5_model_name=builtin:tiny-t5", "feda2v.diffusion_type=flux"]
    done = subprocess.run([sys.executable, "-m", "fed_a2v.cli", "simulate", "--config", str(path),
                           *[a for s in sets for a in ("--set", s)]],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-5000:]
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    recorded = json.loads((run_dir / "config.json").read_text())
    assert "algorithm" not in recorded["federation"] and "model" not in recorded
    monkeypatch.chdir(tmp_path)  # relative paths resolve as simulate resolved them
    expected = load_config(path, sets)
    expected.make_paths_absolute()
    again = load_config(run_dir / "config.json")
    assert again.to_dict() == {**expected.to_dict(), "experiment": again.to_dict()["experiment"]}
    assert (again.federation.num_clients, again.dataset.partition,
            again.feda2v.adapter_aggregation_mode) == (2, "classes", "avg")
    assert json.loads((run_dir / "summary.json").read_text())["rounds"] == 2
