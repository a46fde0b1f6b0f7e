"""`federation.strategy`: Flower's strategies with FedA2V around them
(fed_a2v.federation.flower_strategies).

In process, on real Flower Messages: what each strategy makes of the same replies (FedAvg as
before, the robust ones unmoved by a poisoned update, FedAdam Flower's own step), what the
nodes are told (FedProx's mu), the node's proximal term, and the config errors. Then every
strategy for 3 rounds in one real Flower simulation (Ray; `tests/one_simulation.py`)."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAdam

from fed_a2v.config.feda2v_section import FedA2VConfig
from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.schema import STRATEGY_NAMES
from fed_a2v.config.strategy_options import SET_BY_FEDA2V, STRATEGY_OPTIONS
from fed_a2v.config.validate import config_from_dict
from fed_a2v.encode.encoded_set import EncodedSet
from fed_a2v.encode.text_targets import Targets
from fed_a2v.federation.feda2v_strategy import FedA2VStrategy
from fed_a2v.federation.flower_strategies import STRATEGIES, build_strategy
from fed_a2v.federation.protocol import TRANSPORT
from fed_a2v.federation.transport import encode_update
from fed_a2v.model.adapters import adapters_for_targets, adapters_state
from fed_a2v.model.train import LocalTrainConfig, train_local

from drills import APP_DIR, LoopbackGrid, experiment_dict, run_in_process, server_identity
from drills import NodesGrid as Nodes

SHAPES = {"clip.w": (4, 3), "clip.b": (3,), "t5.w": (2, 5, 7)}
ROBUST = {"FedMedian": {}, "FedTrimmedAvg": {"beta": 0.2}, "Krum": {"num_malicious_nodes": 1},
          "MultiKrum": {"num_malicious_nodes": 1, "num_nodes_to_select": 3},
          "Bulyan": {"num_malicious_nodes": 1}}


def states(n: int, seed: int, spread: float = 0.1) -> tuple[dict, list[dict]]:
    """A global state and `n` updates near it."""
    rng = np.random.default_rng(seed)
    base = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    return base, [{k: (v + spread * rng.standard_normal(v.shape)).astype(np.float32)
                   for k, v in base.items()} for _ in range(n)]


def strategy(name: str = "FedAvg", options: dict | None = None, **kwargs) -> FedA2VStrategy:
    targets = Targets(["a"], ["a"], {"clip": torch.zeros(1, 2), "t5": torch.zeros(1, 1, 2)})
    return build_strategy(name, options, targets=targets,
                          lr_for_round=lambda _: {"clip": 1e-3, "t5": 1e-3},
                          min_train_nodes=kwargs.pop("min_train_nodes", 1), **kwargs)


def record(state: dict) -> ArrayRecord:
    return ArrayRecord({k: Array(v.copy()) for k, v in state.items()})


def reply(node: int, state: dict, examples: int, reference: dict, dtype: str = "fp32"
          ) -> Message:
    """A node's train reply, encoded as the ClientApp encodes it."""
    arrays, transport = encode_update(state, reference, dtype)
    instruction = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}),
                          dst_node_id=node, message_type=MessageType.TRAIN)
    return Message(RecordDict({"arrays": arrays, TRANSPORT: transport,
                               "metrics": MetricRecord({"num-examples": examples})}),
                   reply_to=instruction)


def flower_reply(node: int, state: dict, examples: int) -> Message:
    """The same train reply as plain Flower strategies read it: one Array per tensor."""
    instruction = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}),
                          dst_node_id=node, message_type=MessageType.TRAIN)
    return Message(RecordDict({"arrays": record(state),
                               "metrics": MetricRecord({"num-examples": examples})}),
                   reply_to=instruction)


def one_round(s: FedA2VStrategy, reference: dict, updates: list[dict], weights: list[int],
              dtype: str = "fp32") -> dict[str, np.ndarray]:
    """configure_train on `reference`, then aggregate_train of the nodes' replies."""
    nodes = list(range(10, 10 + len(updates)))
    s.configure_train(1, record(reference), ConfigRecord(), Nodes(nodes))
    arrays, _ = s.aggregate_train(1, [reply(n, u, w, reference, dtype) for n, u, w
                                      in zip(nodes, updates, weights, strict=True)])
    return {k: v.numpy() for k, v in arrays.items()}


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_fedavg_and_the_strategies_that_reduce_to_it_give_todays_fedavg_bit_for_bit(
        task_identity, dtype: str) -> None:
    reference, updates = states(5, seed=1)
    weights = [5, 9, 1, 12, 3]
    old = FedA2VStrategy(Targets(["a"], ["a"], {"clip": torch.zeros(1, 2)}),
                         lambda _: {"clip": 1e-3, "t5": 1e-3}, min_train_nodes=1,
                         transport_dtype=dtype)
    today = one_round(old, reference, updates, weights, dtype)
    for name, options in [("FedAvg", {}), ("FedProx", {"proximal_mu": 0.1}), ("FedAvgM", {})]:
        new = one_round(strategy(name, options, transport_dtype=dtype), reference, updates,
                        weights, dtype)
        assert new.keys() == today.keys()
        for key, value in today.items():
            assert new[key].dtype == value.dtype and np.array_equal(new[key], value), name


def test_fedprox_tells_the_nodes_its_mu_beside_fedA2Vs_learning_rates(task_identity) -> None:
    reference, _ = states(0, seed=1)
    s = strategy("FedProx", {"proximal_mu": 0.25})
    messages = list(s.configure_train(1, record(reference), ConfigRecord(), Nodes([3, 4])))
    assert len(messages) == 2
    for m in messages:
        config = m.content["config"]
        assert config["proximal-mu"] == 0.25 and config["clip-lr"] == 1e-3
        assert "targets" in m.content  # FedA2V's delivery, first contact


@pytest.mark.parametrize("name,options", [("FedAvgM", {"server_learning_rate": 0.5,
                                                        "server_momentum": 0.9}),
                                          ("FedYogi", {"eta": 0.01}),
                                          ("FedAdagrad", {"eta": 0.01})])
def test_server_optimisers_are_flowers_own_step_from_fedA2Vs_mean(task_identity, name: str,
                                                                  options: dict) -> None:
    reference, updates = states(3, seed=5, spread=0.05)
    weights = [2, 7, 1]
    ours = one_round(strategy(name, options), reference, updates, weights)
    flower = STRATEGIES[name](**options)
    list(flower.configure_train(1, record(reference), ConfigRecord(), Nodes([10, 11, 12])))
    expected, _ = flower.aggregate_train(1, [flower_reply(10 + i, u, w) for i, (u, w)
                                             in enumerate(zip(updates, weights, strict=True))])
    fedavg = one_round(strategy("FedAvg"), reference, updates, weights)
    for key in reference:
        np.testing.assert_allclose(ours[key], expected[key].numpy(), rtol=0, atol=1e-6)
        assert not np.allclose(ours[key], fedavg[key], atol=1e-4)


@pytest.mark.parametrize("resumed_after", [0, 3])
def test_fedadam_is_flowers_fedadam_step_from_the_rounds_global_adapters(
        task_identity, resumed_after: int) -> None:
    reference, updates = states(4, seed=2, spread=0.05)
    weights = [3, 1, 4, 1]
    fedavg = one_round(strategy("FedAvg"), reference, updates, weights)
    s = strategy("FedAdam", {"eta": 0.01, "tau": 1e-3})
    s.round_offset = resumed_after  # a resumed run: the arrays are the checkpoint's
    adam = one_round(s, reference, updates, weights)
    flower = FedAdam(eta=0.01, tau=1e-3)
    flower.current_arrays = {k: v.copy() for k, v in reference.items()}
    expected, _ = flower.aggregate_train(1, [flower_reply(10 + i, u, w) for i, (u, w)
                                             in enumerate(zip(updates, weights, strict=True))])
    for key in reference:
        assert adam[key].dtype == np.float32  # FedAdam's own step is float64
        np.testing.assert_allclose(adam[key], expected[key].numpy(), rtol=0, atol=1e-6)
        assert not np.allclose(adam[key], fedavg[key], atol=1e-4)  # it moves its own way


@pytest.mark.parametrize("name", list(ROBUST))
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_robust_strategies_ignore_a_poisoned_update_that_moves_fedavg(
        task_identity, name: str, dtype: str) -> None:
    """Seven updates, one of them a large but finite shift that passes screening (no
    max_update_norm): FedAvg follows it, the robust strategies stay within the honest
    updates, value by value."""
    reference, honest = states(6, seed=3)
    poisoned = {k: v + 1000.0 for k, v in reference.items()}
    updates, weights = [*honest[:3], poisoned, *honest[3:]], [10] * 7
    robust = strategy(name, ROBUST[name], min_train_nodes=7, transport_dtype=dtype)
    result = one_round(robust, reference, updates, weights, dtype)
    fedavg = one_round(strategy("FedAvg", transport_dtype=dtype), reference, updates, weights,
                       dtype)
    assert robust.rejected == []  # the poisoned update was accepted: the strategy copes
    wire = np.float16 if dtype == "fp16" else np.float32
    for key in SHAPES:
        seen = np.stack([u[key].astype(wire).astype(np.float32) for u in honest])
        assert result[key].dtype == np.float32
        assert (seen.min(0) - 1e-6 <= result[key]).all()
        assert (result[key] <= seen.max(0) + 1e-6).all()
        assert np.abs(fedavg[key] - reference[key]).min() > 100  # ~1000 / 7


def test_robust_strategies_report_the_metrics_of_every_accepted_update(task_identity) -> None:
    reference, updates = states(3, seed=4)
    s = strategy("FedMedian", min_train_nodes=2)
    nodes = [10, 11, 12]
    s.configure_train(1, record(reference), ConfigRecord(), Nodes(nodes))
    replies = [reply(n, u, 4, reference) for n, u in zip(nodes, updates, strict=True)]
    replies[1].content["metrics"]["train_clip_loss"] = 3.0
    for r in (replies[0], replies[2]):
        r.content["metrics"]["train_clip_loss"] = 1.0
    bad = reply(13, {**updates[0], "clip.b": np.full(3, np.nan, np.float32)}, 4, reference)
    arrays, metrics = s.aggregate_train(1, [*replies, bad])
    assert [(n, why) for _, n, why, _ in s.rejected] == [(13, "'clip.b' holds non-finite values")]
    assert metrics["train_clip_loss"] == pytest.approx(5.0 / 3)
    assert s.round_metrics[1]["train_nodes"] == 3 and not s.kept


@pytest.mark.slow
def test_a_resumed_run_takes_its_server_step_from_the_resumed_adapters(tmp_path: Path) -> None:
    """Two FedAvg rounds, then the run resumed for a third with FedAdam: Flower's FedOpt
    takes the round's global adapters as its `current_arrays`, so the third round's adapters
    are the second's plus one Adam step, no value moving more than eta·sqrt(1+β2)/(1+β1)."""
    from fed_a2v.federation.server import run_federation

    eta = 1e-4
    experiment = experiment_dict(tmp_path, "resumed", seed=2, output_dir=tmp_path / "runs",
                                 federation={"global_rounds": 2, "num_clients": 2,
                                             "min_clients": 2, "local_epochs": 1,
                                             "baselines": False},
                                 dataset={"clips_per_class": 8})
    run_dir = run_in_process(experiment, tmp_path / "resumed.json", LoopbackGrid(2))
    with server_identity():
        summary = run_federation(LoopbackGrid(2), Context(
            run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={
                "run-dir": str(run_dir), "resume": True, "rounds": 3,
                "set": f"federation.strategy=FedAdam "
                       f"'federation.strategy_options={{\"eta\": {eta}}}'"}), APP_DIR)
    assert summary["strategy"] == "FedAdam" and summary["rounds"] == 3
    first, second, third = (final_adapters(run_dir, r) for r in (1, 2, 3))
    bound = eta * np.sqrt(1 + 0.99) / (1 + 0.9) * (1 + 1e-3)
    assert max(float((third[k] - second[k]).abs().max()) for k in third) <= bound
    assert max(float((second[k] - first[k]).abs().max()) for k in third) > 20 * bound
    assert third.keys() == second.keys() and any(not torch.equal(third[k], second[k])
                                                 for k in third)


def test_proximal_term_keeps_local_adapters_nearer_the_global_ones() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(4)
    data = EncodedSet(torch.randn(len(labels), 6, 16, generator=gen), labels)
    targets = {"clip": torch.randn(3, 8, generator=gen), "t5": torch.randn(3, 3, 8, generator=gen)}

    def distance(mu: float) -> float:
        adapters = adapters_for_targets(
            16, targets, FedA2VConfig(t5_max_length=3, adapter_hidden_dim=32), seed=0)
        start = {k: v.clone() for k, v in adapters_state(adapters).items()}
        cfg = LocalTrainConfig(epochs=4, batch_size=4, stratified=False, per_class_loss=False,
                               grad_accum_steps=1, learning_rates={"clip": 1e-2, "t5": 1e-2},
                               weight_decays={"clip": 0.0, "t5": 0.0}, seed=1, proximal_mu=mu)
        train_local(adapters, data, targets, cfg, torch.device("cpu"))
        end = adapters_state(adapters)
        return float(sum(((end[k] - start[k]) ** 2).sum() for k in start).sqrt())

    free, held = distance(0.0), distance(10.0)
    assert held < 0.8 * free


def experiment(**federation) -> dict:
    return {"federation": {"num_clients": 3, "min_clients": 3, **federation}}


@pytest.mark.parametrize("federation,feda2v,says", [
    ({"strategy": "FedProx", "strategy_options": {"mu": 0.1}}, {},
     "'federation.strategy_options.mu': FedProx has no option 'mu'; its options: proximal_mu"),
    ({"strategy": "FedAdam", "strategy_options": {"min_train_nodes": 3}}, {},
     "'federation.strategy_options.min_train_nodes': FedAdam's 'min_train_nodes' is not an "
     "option here: 'federation.min_clients' sets it"),
    ({"strategy": "FedAdam", "strategy_options": {"eta_l": 0.1}}, {}, "never uses it"),
    ({"strategy": "Krum", "strategy_options": {"num_malicious_nodes": 1.5}}, {},
     "'federation.strategy_options.num_malicious_nodes': must be an integer, got 1.5"),
    ({"strategy": "FedTrimmedAvg", "strategy_options": {"beta": 0.5}}, {},
     "must be below 0.5"),
    ({"strategy": "FedYogi", "strategy_options": {"eta": -1}}, {}, "must be a finite number >= 0"),
    ({"strategy": "Bulyan", "strategy_options": {"num_malicious_nodes": 1}}, {},
     "'federation.min_clients': Bulyan with num_malicious_nodes 1 needs at least 7 updates"),
    ({"strategy": "Krum", "strategy_options": {"num_malicious_nodes": 1}}, {},
     "Krum with num_malicious_nodes 1 needs at least 5"),
    ({"strategy": "FedMedian"}, {"adapter_aggregation_mode": "none"},
     "'federation.strategy' FedMedian aggregates the nodes' adapters, but "
     "'feda2v.adapter_aggregation_mode' is \"none\""),
    ({"strategy": "fedavg"}, {}, "did you mean 'FedAvg'"),
])
def test_strategy_settings_that_cannot_work_are_config_errors(federation, feda2v, says) -> None:
    with pytest.raises(ConfigError, match="exp.json: ") as err:
        config_from_dict({**experiment(**federation), "feda2v": feda2v}, "exp.json")
    assert says in str(err.value)


def test_every_strategy_has_a_config_that_loads() -> None:
    options = {**ROBUST, "FedProx": {"proximal_mu": 0.01}, "FedAvgM": {"server_momentum": 0.9},
               "FedAdam": {"eta": 0.01, "tau": 1e-3}, "FedYogi": {"eta": 0.01},
               "FedAdagrad": {"eta": 0.01}}
    for name in STRATEGIES:
        config = config_from_dict(experiment(strategy=name, num_clients=7, min_clients=7,
                                             strategy_options=options.get(name, {})))
        assert config.federation.strategy == name
        assert config.to_dict()["federation"]["strategy_options"] == options.get(name, {})


# Every strategy in the simulation, with the options it runs with there.
SWEEP = {"FedAvg": {}, "FedProx": {"proximal_mu": 100.0}, "FedAvgM": {"server_momentum": 0.9},
         "FedAdam": {"eta": 0.01}, "FedYogi": {"eta": 0.01}, "FedAdagrad": {"eta": 0.01},
         "FedTrimmedAvg": {"beta": 0.2}, "FedMedian": {}, "Krum": {},
         "MultiKrum": {"num_nodes_to_select": 2}, "Bulyan": {}}
SIM_ROUNDS = 3


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict[str, Path]:
    """Each strategy's run directory, all run in one Flower simulation of 3 nodes."""
    root = tmp_path_factory.mktemp("strategies")
    paths = []
    for name, options in SWEEP.items():
        experiment = experiment_dict(
            root, name, seed=4, output_dir=root / "runs" / name,
            federation={"global_rounds": SIM_ROUNDS, "num_clients": 3, "min_clients": 3,
                        "local_epochs": 1, "eval_gap": SIM_ROUNDS, "strategy": name,
                        "strategy_options": options},
            dataset={"clips_per_class": 8})
        experiment["training"]["batch_size"] = 2  # a few local steps: FedProx's term acts
        paths.append(root / f"{name}.json")
        paths[-1].write_text(json.dumps(experiment))
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("one_simulation.py")),
                           "3", *map(str, paths)], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-5000:]
    assert done.stdout.count("RUN ") == len(SWEEP), done.stderr[-5000:]
    return {name: next((root / "runs" / name).iterdir()) for name in SWEEP}


def final_adapters(run_dir: Path, round_: int = SIM_ROUNDS) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "checkpoints" / f"round-{round_:04d}.safetensors")


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a).sqrt())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SWEEP))
def test_every_strategy_runs_three_rounds_in_a_flower_simulation(sweep, name: str) -> None:
    run_dir = sweep[name]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["strategy"] == name and summary["strategy_options"] == SWEEP[name]
    assert summary["rounds"] == SIM_ROUNDS and summary["num_nodes"] == 3
    assert summary["rejected_updates"] == [] and summary["failed_replies"] == []
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [1, 2, 3]
    assert all(m["train_nodes"] == 3 for m in metrics)
    assert all(m["clip_lr"] == 0.003 for m in metrics)  # FedA2V's schedule still drives nodes
    assert metrics[-1]["eval_clip_top1"] is not None  # evaluated after the last round only
    assert metrics[0]["eval_clip_top1"] is None  # eval_gap 3
    rounds = [final_adapters(run_dir, r) for r in range(1, SIM_ROUNDS + 1)]
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all()
               for state in rounds for v in state.values())
    assert distance(rounds[0], rounds[-1]) > 0  # the global adapters moved


@pytest.mark.slow
def test_strategies_make_their_own_global_adapters(sweep) -> None:
    """The same nodes and seeds: FedAdam's server step is not FedAvg's, and FedProx's large
    mu (sent to the nodes) holds each round's local training near the global adapters."""
    fedavg = final_adapters(sweep["FedAvg"])
    assert distance(final_adapters(sweep["FedAdam"]), fedavg) > 1e-2 * distance(fedavg, {
        k: torch.zeros_like(v) for k, v in fedavg.items()})

    def moved(name: str) -> float:  # how far the global adapters went from round 1 to 3
        return distance(final_adapters(sweep[name], 1), final_adapters(sweep[name]))

    assert moved("FedProx") < 0.5 * moved("FedAvg")


def test_the_config_knows_each_strategy_s_options_as_flower_s_signature_has_them() -> None:
    """The config checks `strategy_options` against its own table, without importing Flower;
    the table must be what the installed Flower's classes take, less what FedA2V sets."""
    assert tuple(STRATEGY_OPTIONS) == STRATEGY_NAMES == tuple(STRATEGIES)
    for name, cls in STRATEGIES.items():
        params = inspect.signature(cls.__init__).parameters.values()
        flower = {p.name: type(p.default) for p in params
                  if p.name != "self" and p.name not in SET_BY_FEDA2V}
        assert STRATEGY_OPTIONS[name] == flower, name
