"""`feda2v.diffusion_type` "sd" (one CLIP-sequence adapter) beside "flux", and
`use_cls_token_only` (adapters see the AST's first token), experiment-wide or per node."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from safetensors.torch import load_file

import fed_a2v.encode.text_targets as targets_module
from fed_a2v.cli import main
from fed_a2v.config.feda2v_section import FedA2VConfig
from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.schema import Config
from fed_a2v.config.validate import config_from_dict
from fed_a2v.data.node_corpora import open_corpus
from fed_a2v.encode import encoders
from fed_a2v.encode.encoded_set import EncodedSet
from fed_a2v.encode.text_targets import Targets, compute_targets, target_prompts, targets_for
from fed_a2v.federation.node import evaluate_reply, train_reply
from fed_a2v.federation.protocol import TARGET_NAMES, TARGETS
from fed_a2v.federation.server import lr_plan
from fed_a2v.model.adapters import (
    Adapter,
    adapter_names,
    adapters_for_targets,
    adapters_state,
    build_adapters,
)
from fed_a2v.model.evaluation import evaluate_adapters
from fed_a2v.model.pretrained import FedA2VAdapters
from fed_a2v.model.train import LocalTrainConfig, train_local
from fed_a2v.runs.run_dir import eval_keys, round_keys

from drills import experiment_dict

PROMPTS = ["a dog barking", "rain", "a siren wailing loudly in the street"]
CPU = torch.device("cpu")
D_TOKEN, N_TOKENS, NUM_CLASSES = 16, 6, 3


def sd_config(**feda2v) -> FedA2VConfig:
    return FedA2VConfig(diffusion_type="sd", adapter_hidden_dim=32, **feda2v)


def tokens_data(per_class: int = 4, seed: int = 0) -> EncodedSet:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    return EncodedSet(torch.randn(len(labels), N_TOKENS, D_TOKEN, generator=gen), labels)


# --- targets -------------------------------------------------------------------------------


def test_sd_targets_are_the_clip_token_sequence() -> None:
    seq = encoders.clip_targets("builtin:tiny-clip", PROMPTS, sequence_length=77)
    model, _ = encoders.builtin_clip()
    assert seq.shape == (len(PROMPTS), 77, model.config.hidden_size)
    # Not the pooled output repeated: positions differ, and prompts differ from each other.
    assert not torch.allclose(seq[:, 0], seq[:, -1])
    assert not torch.allclose(seq[0], seq[2])
    short = encoders.clip_targets("builtin:tiny-clip", PROMPTS, sequence_length=8)
    assert short.shape == (len(PROMPTS), 8, model.config.hidden_size)
    with pytest.raises(ValueError, match="clip_max_length"):
        encoders.clip_targets("builtin:tiny-clip", PROMPTS, sequence_length=78)


def test_sd_targets_from_a_saved_clip_loaded_by_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    directory = encoders.save_builtin("builtin:tiny-clip", tmp_path / "clip")
    loaded = encoders.clip_targets(str(directory), PROMPTS, sequence_length=77)
    assert loaded.shape[:2] == (len(PROMPTS), 77)
    assert torch.equal(loaded, encoders.clip_targets("builtin:tiny-clip", PROMPTS,
                                                     sequence_length=77))


@pytest.fixture(scope="module")
def corpus_config(tmp_path_factory) -> Config:
    root = tmp_path_factory.mktemp("sd-corpus")
    return config_from_dict(experiment_dict(root, "sd"))


def with_feda2v(config: Config, cache: Path, **feda2v) -> Config:
    data = config.to_dict()
    data["feda2v"].update(feda2v)
    data["experiment"]["cache_dir"] = str(cache)
    return config_from_dict(data)


def test_sd_compute_targets_loads_no_t5(corpus_config: Config, tmp_path: Path,
                                         monkeypatch) -> None:
    def no_t5(*_, **__):
        raise AssertionError("sd loaded the T5 encoder")

    monkeypatch.setattr(targets_module, "t5_targets", no_t5)
    config = with_feda2v(corpus_config, tmp_path, diffusion_type="sd")
    made = compute_targets(config, *target_prompts(open_corpus(config), config))
    assert set(made.tensors) == {"clip"}
    assert made.tensors["clip"].shape == (len(made.names), 77, 64)


def test_the_targets_cache_is_keyed_by_diffusion_type(corpus_config: Config,
                                                      tmp_path: Path) -> None:
    flux = with_feda2v(corpus_config, tmp_path)
    sd = with_feda2v(corpus_config, tmp_path, diffusion_type="sd")
    assert targets_for(flux, open_corpus(flux)).source == "computed"
    first_sd = targets_for(sd, open_corpus(sd))
    assert first_sd.source == "computed" and set(first_sd.tensors) == {"clip"}
    again = targets_for(sd, open_corpus(sd))
    assert again.source == "cache" and again.key == first_sd.key
    assert set(targets_for(flux, open_corpus(flux)).tensors) == {"clip", "t5"}


def test_a_targets_file_of_the_other_diffusion_type_is_refused(corpus_config: Config,
                                                               tmp_path: Path) -> None:
    flux = with_feda2v(corpus_config, tmp_path)
    path = tmp_path / "flux-targets.safetensors"
    targets_for(flux, open_corpus(flux)).save(path)
    sd = with_feda2v(corpus_config, tmp_path, diffusion_type="sd", targets_file=str(path))
    with pytest.raises(ConfigError, match="diffusion_type") as err:
        targets_for(sd, open_corpus(sd))
    assert str(path) in str(err.value)
    # A file made for sd with another clip_max_length does not fit either.
    sd16 = with_feda2v(corpus_config, tmp_path, diffusion_type="sd", clip_max_length=16)
    path16 = tmp_path / "sd16.safetensors"
    targets_for(sd16, open_corpus(sd16)).save(path16)
    with pytest.raises(ConfigError, match="clip_max_length 77"):
        targets_for(with_feda2v(corpus_config, tmp_path, diffusion_type="sd",
                                targets_file=str(path16)), open_corpus(sd16))


# --- adapters and training ------------------------------------------------------------------


def test_sd_builds_one_clip_sequence_adapter() -> None:
    cfg = sd_config()
    assert adapter_names(cfg) == ("clip",) and adapter_names(FedA2VConfig()) == ("clip", "t5")
    adapters = build_adapters(D_TOKEN, 24, None, cfg, seed=0)
    assert set(adapters) == {"clip"}
    out = adapters["clip"].eval()(torch.randn(5, N_TOKENS, D_TOKEN))
    assert out.shape == (5, 77, 24)
    assert set(adapters_state(adapters)) == {k for k in adapters_state(adapters)
                                             if k.startswith("clip.")}
    # A length-1 sequence stays a sequence: (B, 1, d), as its targets are.
    one = build_adapters(D_TOKEN, 24, None, sd_config(clip_max_length=1), seed=0)["clip"]
    assert one.eval()(torch.randn(2, N_TOKENS, D_TOKEN)).shape == (2, 1, 24)


def test_adapters_follow_their_targets() -> None:
    sd_targets = {"clip": torch.zeros(3, 77, 24)}
    assert set(adapters_for_targets(D_TOKEN, sd_targets, sd_config())) == {"clip"}
    with pytest.raises(ValueError, match="no t5"):
        adapters_for_targets(D_TOKEN, sd_targets, FedA2VConfig())


def test_lr_plan_covers_only_the_adapters_built() -> None:
    config = config_from_dict({"feda2v": {"diffusion_type": "sd"}})
    assert set(lr_plan(config)(1)) == {"clip"}
    assert not any("t5" in k for k in round_keys(config))
    assert {"eval_clip_mse", "eval_clip_cosine", "eval_clip_top1"} <= set(eval_keys(config))
    assert not any("t5" in k for k in eval_keys(config))
    assert set(lr_plan(Config())(1)) == {"clip", "t5"}


def test_local_training_lowers_the_sd_loss() -> None:
    cfg = sd_config(clip_max_length=12, adapter_dropout=0.0)
    gen = torch.Generator().manual_seed(3)
    targets = {"clip": torch.randn(NUM_CLASSES, 12, 8, generator=gen)}
    adapters = adapters_for_targets(D_TOKEN, targets, cfg, seed=0)
    local = LocalTrainConfig(epochs=8, batch_size=4, stratified=False, per_class_loss=False,
                             grad_accum_steps=1, learning_rates={"clip": 3e-3},
                             weight_decays={"clip": 0.0}, seed=0)
    history = train_local(adapters, tokens_data(), targets, local, CPU)
    assert set(history) == {"clip"}
    losses = history["clip"]
    assert all(later < earlier for earlier, later in pairwise(losses)), losses
    assert losses[-1] < 0.85 * losses[0], losses


# --- config --------------------------------------------------------------------------------


def test_a_node_of_another_diffusion_type_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({"feda2v": {"diffusion_type": "sd"},
                          "nodes": {"0": {}, "1": {"diffusion_type": "flux"}}}, "exp.json")
    message = str(err.value)
    assert "exp.json" in message and "nodes.1" in message and "cannot mix sd and flux" in message
    config = config_from_dict({"feda2v": {"diffusion_type": "sd"},
                               "nodes": {"0": {"diffusion_type": "sd"}, "1": {}}})
    assert config.nodes["0"].diffusion_type == "sd"
    with pytest.raises(ConfigError, match="nodes.0"):
        config_from_dict({"nodes": {"0": {"diffusion_type": "sd"}}})  # flux by default


def test_validate_refuses_a_node_json_of_another_diffusion_type(tmp_path: Path,
                                                               capsys) -> None:
    experiment = tmp_path / "exp.json"
    experiment.write_text(json.dumps({"feda2v": {"diffusion_type": "sd"}}))
    node = tmp_path / "node.json"
    node.write_text(json.dumps({"diffusion_type": "flux"}))
    assert main(["validate", str(experiment), "--node", str(node)]) == 2
    err = capsys.readouterr().err
    assert str(node) in err and "cannot mix sd and flux" in err


# --- CLS token only ------------------------------------------------------------------------


def test_cls_only_batches_hold_the_first_token_and_ignore_the_rest() -> None:
    data = tokens_data()
    other = tokens_data(seed=1)  # every token but the first differs
    changed = EncodedSet(torch.cat([data.tokens.batch(range(len(data)))[:, :1],
                                    other.tokens.batch(range(len(other)))[:, 1:]], dim=1),
                         data.labels)
    cls_only, changed_cls = data.first_tokens(1), changed.first_tokens(1)
    assert cls_only.tokens.batch([0, 1]).shape == (2, 1, D_TOKEN)
    assert data.tokens.batch([0, 1]).shape == (2, N_TOKENS, D_TOKEN)  # the original keeps all
    assert cls_only.digest() != data.digest()
    targets = {"clip": torch.randn(NUM_CLASSES, 77, 8)}
    adapters = adapters_for_targets(D_TOKEN, targets, sd_config(), seed=0)
    same = evaluate_adapters(adapters, cls_only, targets, 5, CPU)
    assert same == evaluate_adapters(adapters, changed_cls, targets, 5, CPU)
    assert evaluate_adapters(adapters, data, targets, 5, CPU) != evaluate_adapters(
        adapters, changed, targets, 5, CPU)


def _instruction(config: Config, targets: Targets, state: dict, kind: str) -> Message:
    record = ConfigRecord({"experiment": json.dumps(config.to_dict()), "server-round": 1,
                           "targets-key": targets.key,
                           **{f"{n}-lr": 1e-3 for n in adapter_names(config.feda2v)}})
    return Message(RecordDict({
        "config": record, "arrays": ArrayRecord(state), TARGETS: ArrayRecord(targets.tensors),
        TARGET_NAMES: ConfigRecord({"names": json.dumps(targets.names)})}),
        dst_node_id=7, message_type=kind)


def _context(partition: int) -> Context:
    return Context(run_id=1, node_id=7, state=RecordDict(), run_config={},
                   node_config={"partition-id": partition, "num-partitions": 2})


def test_use_cls_token_only_per_node(corpus_config: Config, tmp_path: Path, monkeypatch,
                                     task_identity) -> None:
    """Node 0 overrides the experiment's false with true: its adapters see one token, in
    training and evaluation; node 1 sees every token. One set of adapters serves both."""
    data = corpus_config.to_dict()
    data["federation"] |= {"num_clients": 2, "min_clients": 2, "local_epochs": 1}
    data["feda2v"] = {"diffusion_type": "sd", "use_cls_token_only": False}
    data["nodes"] = {"0": {"use_cls_token_only": True}, "1": {}}
    data["experiment"]["cache_dir"] = str(tmp_path / "cache")
    config = config_from_dict(data)
    targets = targets_for(config, open_corpus(config))
    d_audio = encoders.describe_audio_encoder(config.feda2v.audio_model_name)[0].hidden_size
    state = adapters_state(adapters_for_targets(d_audio, targets.tensors, config.feda2v))

    seen: list[int] = []
    forward = Adapter.forward

    def spy(self, tokens):
        seen.append(tokens.shape[1])
        return forward(self, tokens)

    monkeypatch.setattr(Adapter, "forward", spy)
    by_node = {}
    for node in (0, 1):
        seen.clear()
        for kind, reply in ((MessageType.TRAIN, train_reply),
                            (MessageType.EVALUATE, evaluate_reply)):
            answer = reply(_instruction(config, targets, state, kind), _context(node))
            assert not answer.has_error()
        by_node[node] = set(seen)
        metrics = answer.content["metrics"]
        assert "eval_clip_top1" in metrics and not any("t5" in k for k in metrics)
    assert by_node[0] == {1}
    (full,) = by_node[1]
    assert full > 1


def test_a_deployed_node_of_another_diffusion_type_refuses(corpus_config: Config,
                                                           tmp_path: Path,
                                                           task_identity) -> None:
    data = corpus_config.to_dict()
    data["feda2v"] = {"diffusion_type": "sd"}
    config = config_from_dict(data)
    node_json = tmp_path / "node.json"
    node_json.write_text(json.dumps({"diffusion_type": "flux"}))
    targets = Targets(["dog"], ["dog"], {"clip": torch.zeros(1, 77, 4)})
    context = Context(run_id=1, node_id=7, state=RecordDict(), run_config={},
                      node_config={"node-config": str(node_json)})
    with pytest.raises(ConfigError, match="cannot mix sd and flux") as err:
        evaluate_reply(_instruction(config, targets, {}, MessageType.EVALUATE), context)
    assert str(node_json) in str(err.value)


# --- a real federation ---------------------------------------------------------------------


@pytest.mark.slow
def test_an_sd_federation_runs_and_reports_clip_only(tmp_path: Path) -> None:
    """Two rounds on Flower's simulation engine with diffusion_type sd; node 0 sees only the
    CLS token, node 1 every token."""
    experiment = experiment_dict(
        tmp_path, "sd-sim", federation={"global_rounds": 2, "num_clients": 2,
                                        "min_clients": 2, "local_epochs": 2},
        feda2v={"diffusion_type": "sd"},
        nodes={"0": {"use_cls_token_only": True}, "1": {"diffusion_type": "sd"}})
    path = tmp_path / "sd.json"
    path.write_text(json.dumps(experiment))
    done = subprocess.run([sys.executable, "-m", "fed_a2v.cli", "simulate", "--config",
                           str(path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-5000:]
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    config = config_from_dict(json.loads((run_dir / "config.json").read_text()))
    rounds = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    for record in rounds:
        assert set(record) == {"round", *round_keys(config)}
        assert all(isinstance(record[k], float) for k in eval_keys(config)), record
    nodes = [json.loads(x) for x in (run_dir / "nodes.jsonl").read_text().splitlines()]
    assert nodes and not any("t5" in k for n in nodes for k in n)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"eval_clip_mse", "eval_clip_cosine", "eval_clip_top1"} <= set(summary)
    assert not any("t5" in k for k in summary)
    package = FedA2VAdapters.from_pretrained(run_dir)  # strict: every key and shape fits
    assert package.diffusion_type == "sd" and "d_t5" not in package.config["dims"]
    assert set(package.adapters) == {"clip"} and package.t5_source is None
    assert all(k.startswith("clip.")
               for k in load_file(run_dir / "final" / "model.safetensors"))
    assert (run_dir / "plot_nodes.png").exists()
