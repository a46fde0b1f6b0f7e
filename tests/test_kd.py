"""Per-class generators and KD aggregation (`adapter_aggregation_mode` `kd`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from flwr.app import MessageType

from fed_a2v.config.feda2v_section import FedA2VConfig
from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.validate import config_from_dict
from fed_a2v.federation.protocol import GENERATOR_REQUEST
from fed_a2v.launch.inprocess import LoopbackGrid, run_in_process
from fed_a2v.model.adapters import adapters_state, build_adapters
from fed_a2v.model.distill import TeacherSums, TransferSet, distill, taught
from fed_a2v.model.generators import (
    ClassGenerator,
    fit_generators,
    latest_checkpoints,
    load_checkpoint,
    merge_generators,
    save_checkpoints,
)

from drills import experiment_dict, small_experiment

T, D = 6, 16


def two_classes(n: int = 12, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Clips of class a around +1, of class b around -1, each with its own spread."""
    g = torch.Generator().manual_seed(seed)
    a = 1 + 0.3 * torch.randn(n, T, D, generator=g)
    b = -1 + 0.1 * torch.randn(n, T, D, generator=g)
    return torch.cat([a, b]), ["a"] * n + ["b"] * n


def test_a_class_generator_samples_sequences_of_its_class() -> None:
    tokens, labels = two_classes()
    gens = fit_generators(tokens, labels, rank=4)
    assert set(gens) == {"a", "b"} and gens["a"].count == 12
    rng = torch.Generator().manual_seed(1)
    a, b = gens["a"].sample(50, rng), gens["b"].sample(50, rng)
    assert a.shape == (50, T, D)
    assert (a.mean() - 1).abs() < 0.1 and (b.mean() + 1).abs() < 0.1
    # each class keeps its own spread: a's clips vary three times as much as b's
    assert 2 < float(a.std(0).mean() / b.std(0).mean()) < 4.5
    assert len(gens["a"].basis) == 4


def test_unified_and_per_group_generators_share_their_directions() -> None:
    tokens, labels = two_classes()
    tokens = torch.cat([tokens, tokens[:12] + 5])
    labels = labels + ["c"] * 12
    per_class = fit_generators(tokens, labels, rank=3)
    unified = fit_generators(tokens, labels, granularity="unified", rank=3)
    grouped = fit_generators(tokens, labels, granularity="per_group", rank=3,
                             groups={"ac": ["a", "c"]})
    assert not torch.equal(per_class["a"].basis, per_class["c"].basis)
    assert unified["a"].basis is unified["b"].basis is unified["c"].basis
    assert grouped["a"].basis is grouped["c"].basis
    assert grouped["b"].basis is not grouped["a"].basis
    assert torch.equal(unified["c"].points, per_class["c"].points)  # class means stay apart


def test_generators_round_trip_through_upstreams_checkpoint_names(tmp_path: Path) -> None:
    tokens, labels = two_classes()
    gens = fit_generators(tokens, labels, rank=3)
    paths = save_checkpoints(gens, tmp_path, "vae_perclass", 2, "per_class", 3)
    assert sorted(p.name for p in paths) == ["vae_perclass_node2_class_a_round_3.pt",
                                            "vae_perclass_node2_class_b_round_3.pt"]
    back = load_checkpoint(tmp_path / "vae_perclass_node2_class_a_round_3.pt")
    assert list(back) == ["a"]
    for field in ("points", "basis", "scales"):
        assert torch.equal(getattr(back["a"], field), getattr(gens["a"], field))
    same = [g.sample(4, torch.Generator().manual_seed(7)) for g in (gens["a"], back["a"])]
    assert torch.equal(*same)
    # the latest round of each node is what a second phase loads
    save_checkpoints(gens, tmp_path, "vae_perclass", 2, "per_class", 5)
    unified = save_checkpoints(gens, tmp_path, "vae_perclass", 0, "unified", 1)
    assert unified[0].name == "vae_perclass_node0_round_1.pt"
    latest = latest_checkpoints(tmp_path, "vae_perclass")
    assert sorted(latest) == [0, 2]
    assert sorted(p.name for p in latest[2]) == ["vae_perclass_node2_class_a_round_5.pt",
                                                "vae_perclass_node2_class_b_round_5.pt"]
    assert set(load_checkpoint(latest[0][0])) == {"a", "b"}


def test_a_file_that_is_not_a_fed_a2v_generator_is_refused_by_name(tmp_path: Path) -> None:
    foreign = tmp_path / "vae_perclass_node0_class_dog_round_1.pt"
    torch.save({"encoder.weight": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="vae_perclass_node0_class_dog_round_1.pt.*not a FedA2V"):
        load_checkpoint(foreign)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="broken.pt"):
        load_checkpoint(broken)


def test_bad_generator_settings_give_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="'feda2v.generator_type'.*\"gan\""):
        config_from_dict({"feda2v": {"generator_type": "gan"}}, "exp.json")
    with pytest.raises(ConfigError, match="'feda2v.generator_rank'"):
        config_from_dict({"feda2v": {"generator_rank": -1}}, "exp.json")
    with pytest.raises(ConfigError, match="'feda2v.kd_samples_per_class'"):
        config_from_dict({"feda2v": {"kd_samples_per_class": 0}}, "exp.json")
    with pytest.raises(ConfigError, match="'feda2v.generator_class_groups' must be a JSON object"):
        config_from_dict({"feda2v": {"generator_class_groups": {"birds": [1, 2]}}}, "exp.json")
    tokens, labels = two_classes()
    with pytest.raises(ValueError, match="generator_granularity 'per_node'"):
        fit_generators(tokens, labels, granularity="per_node")
    bad = fit_generators(tokens, labels)["a"].arrays()
    bad["basis"] = bad["basis"][:, :5]
    with pytest.raises(ValueError, match="node 3, class a: generator shapes do not fit"):
        ClassGenerator.from_arrays(bad, "node 3, class a")


def total_variance(gen: ClassGenerator) -> float:
    return float(gen.scales.pow(2).sum() + gen.noise**2 * gen.points[0].numel())


def test_merged_generators_keep_the_mixtures_mean_and_variance() -> None:
    tokens, labels = two_classes(n=10)
    a = fit_generators(tokens[:10], labels[:10], rank=9)["a"]
    b = fit_generators(tokens[10:] + 2, ["a"] * 10, rank=9)["a"]
    b.count = 30
    merged = merge_generators([a, b], rank=40)
    assert merged.count == 40
    assert torch.allclose(merged.points[0], 0.25 * a.points[0] + 0.75 * b.points[0], atol=1e-5)
    between = 0.25 * 0.75 * float((a.points[0] - b.points[0]).pow(2).sum())
    expected = 0.25 * total_variance(a) + 0.75 * total_variance(b) + between
    assert total_variance(merged) == pytest.approx(expected, rel=1e-4)
    replay = fit_generators(tokens, labels, kind="replay")
    both = merge_generators([replay["a"], replay["a"]], rank=4)
    assert both.points.shape == (20, T, D) and both.count == 20


def small_adapters(seed: int) -> dict[str, torch.nn.Module]:
    cfg = FedA2VConfig(adapter_hidden_dim=16, t5_max_length=3)
    return build_adapters(D, 8, 8, cfg, seed=seed, target_rows=3)


def transfer_set(samples: int = 6) -> TransferSet:
    tokens, labels = two_classes()
    return TransferSet(fit_generators(tokens, labels, rank=2), samples, seed=3)


def test_a_classs_teacher_is_the_nodes_that_hold_it() -> None:
    transfer = transfer_set()
    node_a, node_b = small_adapters(1), small_adapters(2)
    teacher = TeacherSums(transfer)
    teacher.add(node_a, {"a": 12.0}, "node a")
    teacher.add(node_b, {"b": 5.0, "unknown": 3.0}, "node b")
    assert teacher.nodes == {"a": ["node a"], "b": ["node b"]}
    with torch.no_grad():
        own = {k: torch.cat([taught(m.eval(), x) for x in transfer.batches("a")])
               for k, m in node_a.items()}
    for k in own:
        assert torch.allclose(teacher.mean("a")[k], own[k], atol=1e-6)
    # upstream's teacher: every node for every class
    everyone = TeacherSums(transfer)
    everyone.add(node_a, {"a": 12.0, "b": 12.0}, "node a")
    everyone.add(node_b, {"a": 5.0, "b": 5.0}, "node b")
    assert everyone.nodes["a"] == ["node a", "node b"]
    assert not torch.allclose(everyone.mean("a")["clip"], teacher.mean("a")["clip"])


def test_distillation_changes_both_adapters_towards_the_teacher() -> None:
    transfer = transfer_set()
    teacher = TeacherSums(transfer)
    teacher.add(small_adapters(1), {"a": 1.0, "b": 1.0}, "teacher")
    student = small_adapters(2)
    before = {k: v.clone() for k, v in adapters_state(student).items()}

    def gap() -> dict[str, float]:
        with torch.no_grad():
            return {k: float(sum((taught(m.eval(), torch.cat(transfer.batches(c)))
                                  - teacher.mean(c)[k]).pow(2).mean() for c in ("a", "b")))
                    for k, m in student.items()}

    start = gap()
    losses = distill(student, teacher, epochs=30, lr=3e-3, batch_size=4, seed=0)
    assert set(losses) == {"clip", "t5"}
    after = adapters_state(student)
    for name in ("clip", "t5"):  # upstream never distilled its T5 adapter
        changed = [k for k in after if k.startswith(f"{name}.")
                   and not torch.equal(after[k], before[k])]
        assert changed, name
        assert gap()[name] < 0.5 * start[name]


def test_distillation_repeats_whatever_the_global_rng_did_before() -> None:
    transfer = transfer_set()
    teacher = TeacherSums(transfer)
    teacher.add(small_adapters(1), {"a": 1.0, "b": 1.0}, "teacher")
    states = []
    for draws in (0, 5):
        torch.rand(draws)  # another user of torch's global RNG ran before
        student = small_adapters(2)
        distill(student, teacher, epochs=2, lr=1e-3, batch_size=4, seed=9)
        states.append(adapters_state(student))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_kd_federation_in_process(tmp_path: Path) -> None:
    """ServerApp and node code on an in-process grid: 3 nodes with one class each; the server
    asks for generators until it holds every node's, then distils from round 2 on."""
    experiment = experiment_dict(
        tmp_path, "kd", output_dir=tmp_path / "runs",
        federation={"global_rounds": 3, "num_clients": 3, "min_clients": 3},
        feda2v={"adapter_aggregation_mode": "kd", "generator_save_checkpoint": True,
                "generator_checkpoint_dir": str(tmp_path / "generators"),
                "generator_checkpoint_base_name": "vae_perclass"},
        nodes={str(i): {"selected_classes": [c]}
               for i, c in enumerate(["dog", "rooster", "siren"])})
    experiment["experiment"]["cache_dir"] = str(tmp_path / "cache")

    grid = LoopbackGrid(3)
    run_dir = run_in_process(experiment, tmp_path / "kd.json", grid)
    asked = {int(m.content["config"]["server-round"]): json.loads(
        str(m.content[GENERATOR_REQUEST]["have"])) for m in grid.sent
        if m.metadata.message_type == MessageType.TRAIN and GENERATOR_REQUEST in m.content}
    assert asked[1] == [] and len(asked[2]) == 3 == len(asked[3])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["kd"]["classes_with_generators"] == ["dog", "rooster", "siren"]
    assert summary["kd"]["generator_bytes_received"] > 0
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rounds[0]["kd_classes"] is None  # no generators yet in round 1
    # the generators were validated where they were fitted, in round 1
    assert 0 <= rounds[0]["generator_clip_top1"] <= 1 and rounds[0]["generator_frechet"] > 0
    assert [r["kd_classes"] for r in rounds[1:]] == [3, 3]
    assert all(r["kd_t5_loss"] is not None and r["kd_clip_loss"] is not None
               for r in rounds[1:])
    saved = sorted(p.name for p in (tmp_path / "generators").iterdir())
    assert len(saved) == 3 and all(n.startswith("vae_perclass_node") for n in saved)


def test_a_first_phase_saves_generators_that_a_second_phase_distils_from(tmp_path: Path) -> None:
    """Upstream's two phases: nodes that only fit and save their generators, then a KD run whose
    server loads them and distils from its first round, asking no node for generators."""
    folder = tmp_path / "generators"
    keys = {"generator_checkpoint_dir": str(folder), "generator_checkpoint_base_name": "vae"}
    nodes = {str(i): {"selected_classes": [c]} for i, c in enumerate(["dog", "rooster"])}
    first = experiment_dict(tmp_path, "phase1", output_dir=tmp_path / "runs",
                            federation={"global_rounds": 2, "num_clients": 2, "min_clients": 2},
                            feda2v={"adapter_aggregation_mode": "none",
                                    "generator_training_mode": True, **keys}, nodes=nodes)
    first["experiment"]["cache_dir"] = str(tmp_path / "cache")
    run_in_process(first, tmp_path / "phase1.json", LoopbackGrid(2))
    assert sorted(p.name for p in folder.iterdir()) == [
        "vae_node0_class_dog_round_1.pt", "vae_node0_class_dog_round_2.pt",
        "vae_node1_class_rooster_round_1.pt", "vae_node1_class_rooster_round_2.pt"]

    second = experiment_dict(tmp_path, "phase2", output_dir=tmp_path / "runs",
                             federation={"global_rounds": 1, "num_clients": 2, "min_clients": 2},
                             feda2v={"adapter_aggregation_mode": "kd",
                                     "generator_load_checkpoint": True, **keys}, nodes=nodes)
    second["experiment"]["cache_dir"] = str(tmp_path / "cache")
    grid = LoopbackGrid(2)
    run_dir = run_in_process(second, tmp_path / "phase2.json", grid)
    assert not any(GENERATOR_REQUEST in m.content for m in grid.sent)
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rounds[0]["kd_classes"] == 2
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["kd"]["classes_with_generators"] == ["dog", "rooster"]
    assert summary["kd"]["generator_bytes_received"] == 0

    # outside KD (upstream's files that only render from the generators): found, not loaded
    images = dict(second, feda2v={**second["feda2v"], "adapter_aggregation_mode": "none"})
    images["experiment"] = {**second["experiment"], "name": "phase2-images"}
    run_dir = run_in_process(images, tmp_path / "phase2-images.json", LoopbackGrid(2))
    found = json.loads((run_dir / "summary.json").read_text())["generators_found"]
    assert found["nodes"] == [0, 1]
    assert found["files"] == ["vae_node0_class_dog_round_2.pt",
                              "vae_node1_class_rooster_round_2.pt"]

    empty = dict(second, feda2v={**second["feda2v"],
                                 "generator_checkpoint_dir": str(tmp_path / "none")})
    with pytest.raises(FileNotFoundError, match="no generator files 'vae_node<id>"):
        run_in_process(empty, tmp_path / "phase2b.json", LoopbackGrid(2))


@pytest.mark.slow
def test_a_kd_federation_on_the_simulation_engine(tmp_path: Path) -> None:
    """Two KD rounds on Flower's simulation engine (Ray, `fed-a2v simulate`): the generators
    travel through Flower's messages and the second round distils on them."""
    experiment = small_experiment(tmp_path, "kd", feda2v={"adapter_aggregation_mode": "kd"},
                                  global_rounds=2, num_clients=2, min_clients=2)
    config = json.loads(experiment.read_text())
    config["nodes"] = {"0": {"selected_classes": ["dog"]},
                       "1": {"selected_classes": ["rooster", "siren"]}}
    experiment.write_text(json.dumps(config))
    done = subprocess.run([sys.executable, "-m", "fed_a2v.cli", "simulate", "--config",
                           str(experiment)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-5000:]
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["kd"]["classes_with_generators"] == ["dog", "rooster", "siren"]
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rounds[0]["kd_classes"] is None and rounds[1]["kd_classes"] == 3
