"""`privacy`: Flower's client-side clipping mods on FedA2V's node replies, Flower's DP strategy
wrappers around FedA2V's strategy (noise on the mean), and ε from Flower's RDP accountant."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
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
from safetensors.numpy import load_file
from test_simulation import read_metrics, simulate

from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.validate import config_from_dict
from fed_a2v.federation.clipping import clipping_mod
from fed_a2v.federation.privacy import NodeAccountant
from fed_a2v.federation.server import run_federation
from fed_a2v.launch.inprocess import LoopbackGrid, run_in_process, server_identity

from drills import APP_DIR, experiment_dict

DELTA = 1e-5


# --- the accountant ---------------------------------------------------------------------------


def spent(sigma: float, rounds: int, sampled: int = 4, nodes: int = 4,
          delta: float = DELTA) -> list[float]:
    """ε after each of `rounds` rounds that sample `sampled` of `nodes` nodes."""
    ledger = NodeAccountant(sigma, nodes, delta)
    out = []
    for _ in range(rounds):
        ledger.release(sampled, nodes)
        out.append(ledger.epsilon)
    return out


def rdp_to_epsilon(orders: np.ndarray, rdp: np.ndarray, delta: float) -> float:
    """Canonne, Kamath & Steinke 2020, Proposition 12: (ε, δ) from RDP, best order."""
    return float(np.min(rdp + np.log1p(-1 / orders) - np.log(delta * orders) / (orders - 1)))


def gaussian_delta(epsilon: float, mu: float) -> float:
    """The exact δ(ε) of a Gaussian mechanism of sensitivity/σ = mu (Balle & Wang 2018,
    Theorem 8): no (ε, δ) bound of it can be smaller."""
    phi = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))  # noqa: E731
    return phi(-epsilon / mu + mu / 2) - math.exp(epsilon) * phi(-epsilon / mu - mu / 2)


def exact_gaussian_epsilon(mu: float, delta: float) -> float:
    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gaussian_delta(mid, mu) > delta else (lo, mid)
    return hi


def sampled_gaussian_rdp(q: float, sigma: float, alpha: int) -> float:
    """RDP of the Poisson-subsampled Gaussian at an integer order (Mironov, Talwar & Zhang
    2019, Section 3.3): log(sum_k C(α,k) (1-q)^(α-k) q^k exp((k²-k)/(2σ²))) / (α-1)."""
    terms = [math.log(math.comb(alpha, k)) + (alpha - k) * math.log1p(-q) + k * math.log(q)
             + (k * k - k) / (2 * sigma**2) for k in range(alpha + 1)]
    top = max(terms)
    return (top + math.log(sum(math.exp(t - top) for t in terms))) / (alpha - 1)


@pytest.mark.parametrize("sigma,rounds", [(1.0, 3), (0.7, 10), (3.0, 50)])
def test_every_node_every_round_is_gaussian_composition(sigma: float, rounds: int) -> None:
    """q = 1: RDP α/(2σ²) per round; T rounds are one Gaussian of σ/√T. ε lies between the
    exact Gaussian's and the RDP closed form minimised over a dense set of orders (the
    accountant's orders are a subset)."""
    epsilon = spent(sigma, rounds)[-1]
    orders = np.linspace(1.02, 2000, 400_000)
    closed_form = rdp_to_epsilon(orders, rounds * orders / (2 * sigma**2), DELTA)
    exact = exact_gaussian_epsilon(math.sqrt(rounds) / sigma, DELTA)
    assert exact < closed_form <= epsilon <= closed_form * 1.01


def test_reference_values() -> None:
    # dp-accounting's reference: (1, 1e-6)-DP for one Gaussian of σ 4.530877117
    assert spent(4.530877117, 1, delta=1e-6)[-1] == pytest.approx(1.0, abs=5e-3)
    # dp-accounting's reference RDP of 50 Poisson-subsampled Gaussians (q 0.01, σ 2.5),
    # which this module's own closed form must reproduce at the integer orders
    for alpha, rdp in ((5, 2.18075656e-03), (50, 2.38460375e-02), (100, 1.67416308e02)):
        assert 50 * sampled_gaussian_rdp(0.01, 2.5, alpha) == pytest.approx(rdp, rel=1e-4)


@pytest.mark.parametrize("sampled,nodes", [(1, 10), (3, 10), (5, 20)])
def test_sampled_nodes_are_poisson_subsampled_gaussian(sampled: int, nodes: int) -> None:
    """q < 1: against the closed form at integer orders; the accountant minimises over these
    and fractional orders besides, so it may only be a little lower."""
    sigma, rounds = 1.1, 20
    orders = np.arange(2, 64)
    rdp = np.array([rounds * sampled_gaussian_rdp(sampled / nodes, sigma, a) for a in orders])
    reference = rdp_to_epsilon(orders, rdp, DELTA)
    epsilon = spent(sigma, rounds, sampled, nodes)[-1]
    assert 0.95 * reference <= epsilon <= reference + 1e-9
    assert epsilon < spent(sigma, rounds, nodes, nodes)[-1]  # sampling amplifies


def test_epsilon_grows_with_rounds_and_shrinks_with_noise() -> None:
    curve = spent(1.0, 12)
    assert all(math.isfinite(e) and e > 0 for e in curve)
    assert all(b > a for a, b in zip(curve, curve[1:], strict=False))
    finals = [spent(sigma, 5)[-1] for sigma in (0.5, 0.8, 1.0, 2.0, 4.0)]
    assert all(b < a for a, b in zip(finals, finals[1:], strict=False))


def test_fewer_nodes_connected_never_lowers_epsilon() -> None:
    """q is sampled / connected: 2 of 5 connected is q 0.4, not 2 of the 10 configured."""
    ledger = NodeAccountant(1.0, 10, DELTA)
    ledger.release(2, 5)
    assert ledger.epsilon >= spent(1.0, 1, 4, 10)[-1]
    assert ledger.epsilon > spent(1.0, 1, 2, 10)[-1]


def test_noise_zero_has_no_guarantee_and_state_survives_a_resume() -> None:
    clipping_only = NodeAccountant(0.0, 3, DELTA)
    assert clipping_only.epsilon == 0.0
    clipping_only.release(3, 3)
    assert clipping_only.epsilon is None
    ledger = NodeAccountant(1.0, 3, DELTA)
    for _ in range(3):
        ledger.release(3, 3)
    again = NodeAccountant(1.0, 3, DELTA)
    again.load_state_dict(json.loads(json.dumps(ledger.state_dict())))
    assert again.epsilon == ledger.epsilon and again.releases == 3


# --- config -----------------------------------------------------------------------------------


def private(mechanism: str = "client_fixed_clipping", **privacy) -> dict:
    return {"privacy": {"mechanism": mechanism, **privacy},
            "feda2v": {"adapter_aggregation_mode": "avg"},
            "federation": {"baselines": False, "num_clients": 3}}


@pytest.mark.parametrize("change,names", [
    ({"feda2v": {"adapter_aggregation_mode": "none"}},
     ["privacy.mechanism", "adapter_aggregation_mode", "standalone"]),
    ({"feda2v": {"adapter_aggregation_mode": "weighted_average"}},
     ["privacy.mechanism", "adapter_aggregation_mode", '"avg"']),
    ({"federation": {"baselines": False, "num_clients": 3, "transport_dtype": "int8"}},
     ["privacy.mechanism", "federation.transport_dtype", '"fp32"']),
    ({"federation": {"baselines": True, "num_clients": 3}},
     ["privacy.mechanism", "federation.baselines"]),
    ({"federation": {"baselines": False, "num_clients": 3, "strategy": "FedAdam"}},
     ["privacy.mechanism", "federation.strategy", '"FedAvg" or "FedProx"']),
    ({"privacy": {"mechanism": "client_fixed_clipping", "delta": 0.4}},
     ["privacy.delta", "federation.num_clients"]),
    ({"privacy": {"mechanism": "client_adaptive_clipping", "noise_multiplier": 1.0}},
     ["privacy.clipped_count_stddev", "privacy.noise_multiplier"]),
    ({"privacy": {"mechanism": "client_fixed", "noise_multiplier": 1.0}},
     ["privacy.mechanism", "client_fixed_clipping"]),
    ({"privacy": {"mechanism": "client_fixed_clipping", "noise_multiplier": -1}},
     ["privacy.noise_multiplier", "minimum"]),
    ({"privacy": {"mechanism": "client_fixed_clipping", "clipping_norm": 0}},
     ["privacy.clipping_norm"]),
    ({"privacy": {"mechanism": "client_adaptive_clipping", "target_clipped_quantile": 1.5}},
     ["privacy.target_clipped_quantile"]),
    ({"privacy": {"mechanism": "client_fixed_clipping", "epsilon": 1}},
     ["unknown key 'privacy.epsilon'"]),
])
def test_config_errors_name_the_fields(change: dict, names: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({**private(), **change})
    for name in names:
        assert name in str(err.value)


def test_config_that_works() -> None:
    config = config_from_dict(private("client_adaptive_clipping", noise_multiplier=1.0,
                                      clipped_count_stddev=1.0))
    assert config.privacy.delta == 1e-5 and config.privacy.clipping_norm == 1.0
    assert config_from_dict({}).privacy.mechanism == "none"


# --- in-process federations (FedA2V's node code behind the ClientApp's mod) -------------------


class ClientAppGrid(LoopbackGrid):
    """Nodes answer through `clipping_mod`, as the ClientApp's train function does; every
    train reply's update (adapters sent back minus the global adapters received) is kept."""

    def __init__(self, num_nodes: int, with_mod: bool = True) -> None:
        super().__init__(num_nodes)
        self.with_mod = with_mod
        self.updates: list[dict[str, np.ndarray]] = []

    def answer(self, message: Message, context: Context) -> Message:
        if message.metadata.message_type != MessageType.TRAIN:
            return super().answer(message, context)
        sent = {k: v.numpy().copy() for k, v in message.content["arrays"].items()}
        reply = (clipping_mod(message, context, super().answer) if self.with_mod
                 else super().answer(message, context))
        if not reply.has_error():
            self.updates.append({k: v.numpy().astype(np.float64) - sent[k]
                                 for k, v in reply.content["arrays"].items()})
        return reply


def norm(update: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(v * v)) for v in update.values()))


def dp_experiment(root: Path, name: str, mechanism: str = "client_fixed_clipping",
                  rounds: int = 3, **privacy) -> dict:
    experiment = experiment_dict(root, name, output_dir=root / name,
                                 federation={"global_rounds": rounds, "baselines": False},
                                 feda2v={"adapter_aggregation_mode": "avg"})
    experiment["privacy"] = {"mechanism": mechanism, **privacy}
    return experiment


def run(root: Path, name: str, grid: LoopbackGrid | None = None, **kwargs) -> Path:
    return run_in_process(dp_experiment(root, name, **kwargs), root / f"{name}.json",
                          grid or ClientAppGrid(3))


def checkpoint(run_dir: Path, server_round: int) -> dict[str, np.ndarray]:
    state = load_file(run_dir / "checkpoints" / f"round-{server_round:04d}.safetensors")
    return {k: v.astype(np.float64) for k, v in state.items()}


def instruction(arrays: dict[str, np.ndarray], **config) -> Message:
    experiment = json.dumps({"privacy": {"mechanism": "client_fixed_clipping"}})
    msg = Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                              "config": ConfigRecord({"experiment": experiment, **config})}),
                  dst_node_id=7, message_type=MessageType.TRAIN)
    msg.metadata.__dict__["_message_id"] = "instruction-1"  # as the SuperLink sets it
    return msg


def test_the_mod_clips_in_the_servers_key_order_and_its_errors_answer_the_instruction(
        task_identity) -> None:
    sent = {"b": np.zeros(3, np.float32), "a": np.zeros(4, np.float32)}
    msg = instruction(sent, clipping_norm=1.0)

    def node(own: dict[str, np.ndarray]):
        return lambda m, _ctx: Message(RecordDict({
            "arrays": ArrayRecord({k: Array(v) for k, v in own.items()}),
            "metrics": MetricRecord({"num-examples": 5}),
            "node": ConfigRecord({"key": "n"})}), reply_to=m)

    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    # the node's adapters in another key order (a resumed run's checkpoint is sorted)
    reply = clipping_mod(msg, context, node({"a": np.full(4, 3.0, np.float32),
                                             "b": np.full(3, 4.0, np.float32)}))
    assert not reply.has_error() and "node" in reply.content  # the node's reports stay
    update = {k: v.numpy() for k, v in reply.content["arrays"].items()}
    assert list(update) == ["b", "a"] and norm(update) == pytest.approx(1.0, rel=1e-6)
    # keys the node should not have: Flower's mod errs as a reply to the node's reply
    wrong = clipping_mod(msg, context, node({"c": np.ones(2, np.float32)}))
    assert wrong.has_error() and wrong.metadata.reply_to_message_id == "instruction-1"
    # no clipping norm in the instruction: an error, never an unclipped update
    unset = clipping_mod(instruction(sent), context, node(sent))
    assert unset.has_error() and unset.metadata.reply_to_message_id == "instruction-1"


def test_each_node_update_is_clipped_and_the_mean_moves_at_most_the_norm(tmp_path) -> None:
    clip = 0.05
    unclipped = ClientAppGrid(3, with_mod=False)
    run(tmp_path, "plain", unclipped, mechanism="none")
    assert min(norm(u) for u in unclipped.updates) > 4 * clip  # so the bound below binds
    grid = ClientAppGrid(3)
    run_dir = run(tmp_path, "clipped", grid, noise_multiplier=0.0, clipping_norm=clip)
    # 3 rounds x 3 nodes, the first with the targets and the overlap check's request beside
    # the adapters: Flower's mod sees only the adapters and config
    assert len(grid.updates) == 9
    assert all(norm(u) <= clip * (1 + 1e-5) for u in grid.updates)
    assert all(norm(u) >= clip * (1 - 1e-5) for u in grid.updates)  # clipped, not dropped
    for r in (2, 3):
        before, after = checkpoint(run_dir, r - 1), checkpoint(run_dir, r)
        assert norm({k: after[k] - before[k] for k in after}) <= clip * (1 + 1e-5)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["privacy"]["epsilon"] is None  # noise 0: no guarantee
    assert "no guarantee" in (run_dir / "report.md").read_text()


def test_noise_is_added_to_the_mean_and_zero_noise_changes_nothing(tmp_path) -> None:
    sigma, clip = 1.0, 1e6  # a norm no update reaches: the clip never binds
    plain = run(tmp_path, "plain", mechanism="none")
    silent = run(tmp_path, "silent", noise_multiplier=0.0, clipping_norm=clip)
    # The mod hands back global + clipped update in float32: the same adapters to a rounding
    # (round 1); local training from them then drifts by a little more each round.
    for r, tolerance in ((1, 1e-7), (3, 1e-3)):
        a, b = checkpoint(plain, r), checkpoint(silent, r)
        assert all(np.allclose(a[k], b[k], rtol=0, atol=tolerance) for k in a)
    small = 1e-3
    quiet = run(tmp_path, "quiet", rounds=1, noise_multiplier=0.0, clipping_norm=small)
    noisy = [run(tmp_path, f"noisy{i}", rounds=1, noise_multiplier=sigma, clipping_norm=small)
             for i in range(2)]
    # round 1 trains from the same adapters with the same seeds: only the noise differs,
    # stdev sigma x clip / 3 nodes per value
    clean = checkpoint(quiet, 1)
    for run_dir in noisy:
        noise = np.concatenate([(checkpoint(run_dir, 1)[k] - clean[k]).ravel() for k in clean])
        assert noise.size > 10_000
        assert np.std(noise) == pytest.approx(sigma * small / 3, rel=0.05)
        assert abs(np.mean(noise)) < 5 * sigma * small / 3 / math.sqrt(noise.size)
    first, second = (checkpoint(d, 1) for d in noisy)
    assert any(not np.array_equal(first[k], second[k]) for k in first)  # never from the seed


def test_epsilon_per_round_in_metrics_summary_and_report(tmp_path) -> None:
    run_dir = run(tmp_path, "eps", noise_multiplier=1.0, clipping_norm=0.1)
    epsilons = [m["dp_epsilon"] for m in read_metrics(run_dir)]
    assert len(epsilons) == 3 and all(math.isfinite(e) for e in epsilons)
    assert epsilons[0] > 0 and epsilons[1] > epsilons[0] and epsilons[2] > epsilons[1]
    assert epsilons == pytest.approx(spent(1.0, 3, 3, 3))
    privacy = json.loads((run_dir / "summary.json").read_text())["privacy"]
    assert privacy | {"epsilon": 0} == {
        **privacy, "mechanism": "client_fixed_clipping", "noise_multiplier": 1.0,
        "clipping_norm": 0.1, "delta": DELTA, "rounds": 3, "epsilon": 0}
    assert privacy["epsilon"] == pytest.approx(epsilons[-1])
    report = (run_dir / "report.md").read_text()
    assert f"(ε, δ) = ({epsilons[-1]:.4g}, 1e-05) after 3 released rounds" in report


def test_adaptive_clipping_moves_the_norm(tmp_path) -> None:
    grid = ClientAppGrid(3)
    run_dir = run(tmp_path, "adaptive", grid, mechanism="client_adaptive_clipping",
                  noise_multiplier=0.0, clipping_norm=0.01, target_clipped_quantile=0.0,
                  clip_norm_lr=0.5)
    norms = [m["dp_clipping_norm"] for m in read_metrics(run_dir)]
    # every update exceeds the norm and none should: it grows each round by e^(0.5 x 1)
    assert norms == pytest.approx([0.01 * math.exp(0.5 * r) for r in range(3)])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["privacy"]["clipping_norm"] == norms[-1]  # the last one the nodes used
    for r, bound in enumerate(norms):
        assert all(norm(u) <= bound * (1 + 1e-5) for u in grid.updates[3 * r:3 * r + 3])


def test_a_resumed_run_goes_on_from_the_privacy_spent(tmp_path) -> None:
    """Two rounds, then the run resumed for a third: ε and the adaptive norm go on from where
    the stopped part left them, as if the run had never stopped."""
    settings = {"mechanism": "client_adaptive_clipping", "noise_multiplier": 1.0,
                "clipped_count_stddev": 1.0, "clipping_norm": 0.01,
                "target_clipped_quantile": 0.0}
    experiment = dp_experiment(tmp_path, "stopped", **settings)
    experiment["federation"]["global_rounds"] = 2
    run_dir = run_in_process(experiment, tmp_path / "stopped.json", ClientAppGrid(3))
    with server_identity():
        run_federation(ClientAppGrid(3), Context(
            run_id=2, node_id=0, node_config={}, state=RecordDict(),
            run_config={"resume": True, "run-dir": str(run_dir), "rounds": 3}), APP_DIR)
    metrics = read_metrics(run_dir)
    assert [m["dp_epsilon"] for m in metrics] == pytest.approx(spent(1.0, 3, 3, 3))
    norms = [m["dp_clipping_norm"] for m in metrics]
    assert norms[2] > norms[1] > norms[0]  # every update clipped, none should be: it grows
    privacy = json.loads((run_dir / "summary.json").read_text())["privacy"]
    assert privacy["rounds"] == 3 and privacy["epsilon"] == pytest.approx(spent(1.0, 3, 3, 3)[-1])


# --- a real federation: Flower's simulation engine, FedA2V's ClientApp -------------------------


def test_simulation_reports_epsilon(tmp_path) -> None:
    experiment = dp_experiment(tmp_path, "dp-sim", "client_adaptive_clipping",
                               noise_multiplier=1.0, clipped_count_stddev=1.0,
                               clipping_norm=0.1)
    experiment["federation"].update(num_clients=2, min_clients=2)
    done = simulate(experiment, tmp_path / "dp-sim.json")
    assert done.returncode == 0, done.stderr[-5000:]
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    epsilons = [m["dp_epsilon"] for m in read_metrics(run_dir)]
    assert all(math.isfinite(e) for e in epsilons)
    assert epsilons == sorted(set(epsilons)) and len(epsilons) == 3  # strictly growing
    privacy = json.loads((run_dir / "summary.json").read_text())["privacy"]
    assert (privacy["epsilon"], privacy["delta"], privacy["rounds"]) == (epsilons[-1], DELTA, 3)
    assert "(ε, δ) = (" in (run_dir / "report.md").read_text()
