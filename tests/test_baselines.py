"""Ridge baselines (fed_a2v.federation.baselines): the map solved from summed node statistics is
the ridge of the pooled clips, its top-1 is the explicit ridge's, and a real run (the ServerApp's
code and the nodes' in one process) reports it beside FedA2V and chance;
`federation.baselines` false sends nothing extra."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from fed_a2v.federation.baselines import (
    RidgeBaselines,
    RidgeStats,
    nearest_rows,
    own_cosines,
    pooled_features,
    predict_rows,
    solve,
    top1_hits,
)
from fed_a2v.federation.protocol import (
    RIDGE_COSINE,
    RIDGE_HITS,
    RIDGE_MAPS,
    RIDGE_REQUEST,
    RIDGE_STATS,
)
from fed_a2v.federation.server import run_federation

from drills import APP_DIR, LoopbackGrid, experiment_dict, run_in_process, server_identity

LAM = 1e-3


def explicit_ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """W = (XᵀX + λ'I)⁻¹XᵀY, λ' = lam times the mean diagonal of XᵀX, written out."""
    xtx = x.T @ x
    return np.linalg.solve(xtx + lam * np.trace(xtx) / len(xtx) * np.eye(len(xtx)), x.T @ y)


def test_summed_node_stats_give_the_ridge_of_the_pooled_clips() -> None:
    gen = torch.Generator().manual_seed(0)
    nodes = [(pooled_features(torch.randn(n, 6, 4, generator=gen)),
              torch.randint(0, 5, (n,), generator=gen)) for n in (7, 30, 12)]
    summed = sum((RidgeStats.of(x, r, 5) for x, r in nodes[1:]), RidgeStats.of(*nodes[0], 5))
    pooled = RidgeStats.of(torch.cat([x for x, _ in nodes]), torch.cat([r for _, r in nodes]), 5)
    assert summed.clips == pooled.clips == 49
    torch.testing.assert_close(solve(summed, LAM), solve(pooled, LAM), rtol=1e-12, atol=1e-12)
    # The wire format (upper triangle of XᵀX) loses nothing.
    back = RidgeStats.from_arrays(summed.to_arrays(), 17, 5)
    torch.testing.assert_close(back.xtx, summed.xtx, rtol=0, atol=0)


def test_node_stats_are_exactly_symmetric_whatever_the_blas(monkeypatch) -> None:
    """XᵀX from a matmul whose triangles differ in the last bits (MKL's on an AMD EPYC: 3.6e-15)
    is symmetrised before it is summed and sent, so the wire format rebuilds it exactly."""
    gen = torch.Generator().manual_seed(2)
    x = pooled_features(torch.randn(30, 6, 4, generator=gen))  # (30, 17)
    rows = torch.randint(0, 5, (30,), generator=gen)
    skew = torch.zeros(17, 17, dtype=torch.float64)
    skew[0, 1] = 3.6e-15
    matmul = torch.Tensor.__matmul__

    def lopsided(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = matmul(a, b)
        return out + skew if out.shape == skew.shape else out

    monkeypatch.setattr(torch.Tensor, "__matmul__", lopsided)
    assert not torch.equal(x.T @ x, (x.T @ x).T)  # the matmul is lopsided
    stats = RidgeStats.of(x, rows, 5)
    monkeypatch.undo()
    assert torch.equal(stats.xtx, stats.xtx.T)
    total = stats + RidgeStats.of(x, rows, 5)
    back = RidgeStats.from_arrays(total.to_arrays(), 17, 5)
    assert torch.equal(back.xtx, total.xtx)


def test_predictions_through_a_and_t_are_the_explicit_ridge_predictions() -> None:
    gen = torch.Generator().manual_seed(1)
    x = pooled_features(torch.randn(40, 5, 3, generator=gen))
    rows = torch.randint(0, 6, (40,), generator=gen)
    targets = torch.randn(6, 4, 5, generator=gen, dtype=torch.float64)  # a T5-like (K, L, D)
    flat = targets.flatten(1).numpy()
    w = explicit_ridge(x.numpy(), flat[rows.numpy()], LAM)
    test = pooled_features(torch.randn(25, 5, 3, generator=gen))
    coeffs = predict_rows(solve(RidgeStats.of(x, rows, 6), LAM), test)
    np.testing.assert_allclose((coeffs @ targets.flatten(1)).numpy(), test.numpy() @ w,
                               rtol=1e-8, atol=1e-10)
    # Top-1 as fed_a2v.model.evaluation computes it for the adapters: cosine to every flat target.
    pred = torch.from_numpy(test.numpy() @ w)
    nearest = (F.normalize(pred, dim=1) @ F.normalize(targets.flatten(1), dim=1).T).argmax(1)
    assert torch.equal(nearest_rows(coeffs, targets), nearest)
    # The held-out cosine to the own target, as the adapters report it, without the predictions.
    own = torch.from_numpy(flat).double()[rows[:25]]
    np.testing.assert_allclose(own_cosines(coeffs, targets, rows[:25]).numpy(),
                               F.cosine_similarity(pred, own, dim=1).numpy(), rtol=1e-9)


def test_separable_data_is_solved_and_random_labels_score_chance() -> None:
    gen = torch.Generator().manual_seed(2)
    k, hidden = 4, 6
    centres = 3 * torch.randn(k, hidden, generator=gen)
    targets = torch.randn(k, 8, generator=gen)

    def clips(n: int, rows: torch.Tensor) -> torch.Tensor:  # tokens around their row's centre
        return pooled_features(centres[rows, None, :] + torch.randn(n, 5, hidden, generator=gen))

    rows = torch.randint(0, k, (200,), generator=gen)
    maps = solve(RidgeStats.of(clips(200, rows), rows, k), LAM)
    test_rows = torch.randint(0, k, (300,), generator=gen)
    assert top1_hits(maps, clips(300, test_rows), targets, test_rows) == 300

    noise = pooled_features(torch.randn(400, 5, hidden, generator=gen))
    random_maps = solve(RidgeStats.of(noise, torch.randint(0, k, (400,), generator=gen), k), LAM)
    test_rows = torch.randint(0, k, (4000,), generator=gen)
    hits = top1_hits(random_maps, pooled_features(torch.randn(4000, 5, hidden, generator=gen)),
                     targets, test_rows)
    assert 0.20 < hits / 4000 < 0.30  # chance 0.25; 4000 clips: sd 0.007


def test_bad_statistics_are_refused() -> None:
    stats = RidgeStats.of(pooled_features(torch.randn(5, 3, 2)), torch.tensor([0, 1, 1, 2, 0]), 3)
    arrays = stats.to_arrays()
    with pytest.raises(ValueError, match="shapes"):
        RidgeStats.from_arrays(arrays, 9, 4)
    with pytest.raises(ValueError, match="non-finite"):
        RidgeStats.from_arrays({**arrays, "sums": np.full_like(arrays["sums"], np.nan)}, 9, 3)
    with pytest.raises(ValueError, match="whole"):
        RidgeStats.from_arrays({**arrays, "counts": arrays["counts"] - 0.5}, 9, 3)



def _hits_reply(hits: dict, cosines: dict, clips: int = 4) -> Message:
    instruction = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}),
                          dst_node_id=7, message_type=MessageType.EVALUATE)
    return Message(RecordDict({RIDGE_HITS: ConfigRecord({"clips": clips, **hits}),
                               RIDGE_COSINE: ConfigRecord(cosines)}), reply_to=instruction)


def test_a_node_s_ridge_hits_and_cosines_are_kept_only_where_they_can_be() -> None:
    gen = torch.Generator().manual_seed(3)
    baselines = RidgeBaselines(LAM, 2, 3)
    baselines._add("node-a", RidgeStats.of(pooled_features(torch.randn(12, 3, 2, generator=gen)),
                                           torch.arange(12) % 3, 3))
    baselines.maps()
    hits = {"central/clip": 2, "local.0/clip": 1}
    with server_identity():
        baselines.note_hits(_hits_reply(hits, {"central/clip": 3.2, "local.0/clip": -1.0}))
        baselines.note_hits(_hits_reply(hits, {"central/clip": 4.5, "local.0/clip": 0.0}))
        baselines.note_hits(_hits_reply(hits, {"local.3/clip": 1.0}))
        # more hits than clips: the reply counts for nothing, its cosines included
        baselines.note_hits(_hits_reply({"central/clip": 5}, {"central/clip": 1.0}))
    # every other reply's hits count; only the first one's cosines could be cosines of 4 clips
    assert baselines.clips == 12 and baselines.hits["node-a"] == {"clip": 3}
    assert baselines.cosine_clips == 4
    assert baselines.cosines == {"central": {"clip": 3.2}, "node-a": {"clip": -1.0}}
    summary = baselines.summary({"clip": 0.5}, {"node-a": "node 0"}, {"clip": 0.7})
    assert summary["held_out_cosine"] == {"clips": 4, "fedA2V": {"clip": 0.7},
                                          "ridge_centralized": {"clip": 0.8},
                                          "local_only_ridge": {"clip": -0.25}}


class KeepingGrid(LoopbackGrid):
    """Keeps, for every reply, its stage, round and record names."""

    def __init__(self, num_nodes: int) -> None:
        super().__init__(num_nodes)
        self.kept: list[tuple[str, int, set[str]]] = []

    def push_messages(self, messages) -> list[str]:
        messages = list(messages)
        ids = super().push_messages(messages)
        for message, i in zip(messages, ids, strict=True):
            self.kept.append((message.metadata.message_type,
                              int(message.content["config"]["server-round"]),
                              set(self.replies[i].content.keys())))
        return ids

    def instructions(self, kind: str) -> list[tuple[int, set[str]]]:
        return [(int(m.content["config"]["server-round"]), set(m.content.keys()))
                for m in self.sent if m.metadata.message_type == kind]


def _experiment(tmp_path: Path, rounds: int, **extra) -> dict:
    experiment = experiment_dict(tmp_path, "ridge", output_dir=tmp_path / "runs",
                                 federation={"global_rounds": rounds, "num_clients": 2,
                                             "min_clients": 2, **extra.pop("federation", {})},
                                 **extra)
    experiment["experiment"]["cache_dir"] = str(tmp_path / "cache")
    return experiment


def test_a_run_reports_the_baselines_and_resumes_with_them(tmp_path: Path) -> None:
    grid = KeepingGrid(2)
    run_dir = run_in_process(_experiment(tmp_path, 2), tmp_path / "ridge.json", grid)
    summary = json.loads((run_dir / "summary.json").read_text())
    baselines = summary["baselines"]

    # The statistics travel once, beside the adapters, which are aggregated as ever.
    train = [(r, keys) for kind, r, keys in grid.kept if kind == MessageType.TRAIN]
    assert [r for r, keys in train if RIDGE_STATS in keys] == [1, 1]
    assert [r for r, keys in grid.instructions(MessageType.TRAIN)
            if RIDGE_REQUEST in keys] == [1, 1]
    assert summary["rejected_updates"] == []
    assert len(set(summary["update_bytes_received_per_round"])) == 1  # stats not counted
    # The maps go out in the final evaluation only, and every node answers with its hits.
    assert [r for r, keys in grid.instructions(MessageType.EVALUATE)
            if RIDGE_MAPS in keys] == [2, 2]
    assert [r for kind, r, keys in grid.kept
            if kind == MessageType.EVALUATE and RIDGE_HITS in keys] == [2, 2]

    assert baselines["chance"] == {"clip_top1": 1 / 3, "t5_top1": 1 / 3}  # 3 classes
    assert baselines["nodes_with_stats"] == baselines["evaluated_nodes"] == 2
    assert baselines["train_clips"] > 0 and baselines["held_out_clips"] > 0
    local = baselines["local_only_ridge"]
    assert set(local["per_node"]) == {"node 0", "node 1"}
    for space in ("clip", "t5"):
        key = f"{space}_top1"
        values = [baselines["ridge_centralized"][key], local[f"{key}_mean"],
                  local[f"{key}_min"], local[f"{key}_max"]]
        assert all(0.0 <= v <= 1.0 for v in values)
        assert baselines["fedA2V"][key] == summary[f"eval_{key}"]
        assert baselines["gap"]["ridge_centralized"][key] == pytest.approx(
            summary[f"eval_{key}"] - baselines["ridge_centralized"][key])
        assert baselines["gap"]["chance"][key] == pytest.approx(summary[f"eval_{key}"] - 1 / 3)
    # The maps' held-out cosine to the own target beside FedA2V's (what FLUX is conditioned on)
    cosine = baselines["held_out_cosine"]
    assert cosine["clips"] == baselines["held_out_clips"]
    assert cosine["fedA2V"] == {s: summary[f"eval_{s}_cosine"] for s in ("clip", "t5")}
    for key in ("ridge_centralized", "local_only_ridge"):
        assert set(cosine[key]) == {"clip", "t5"}
        assert all(-1.0 <= v <= 1.0 for v in cosine[key].values())
    report = (run_dir / "report.md").read_text()
    assert "## Baselines" in report
    assert "| ridge, centralized |" in report and "| chance | 0.333 | 0.333 |" in report
    assert "Held-out cosine to the own target" in report
    assert (f"| ridge, centralized | {cosine['ridge_centralized']['clip']:.3f} | "
            f"{cosine['ridge_centralized']['t5']:.3f} |") in report

    # Resumed after round 1: the statistics come from the run directory, the nodes (asked
    # with the keys the server holds) send none again, and the baselines come out the same.
    (run_dir / "metrics.jsonl").write_text((run_dir / "metrics.jsonl").read_text()
                                           .splitlines()[0] + "\n")
    (run_dir / "summary.json").unlink()
    again = KeepingGrid(2)
    with server_identity():
        run_federation(again, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                      run_config={"run-dir": str(run_dir), "resume": True}),
                       APP_DIR)
    assert not any(RIDGE_STATS in keys for _, _, keys in again.kept)
    resumed = json.loads((run_dir / "summary.json").read_text())["baselines"]
    for key in ("ridge_centralized", "local_only_ridge", "train_clips", "held_out_clips",
                "held_out_cosine"):
        assert resumed[key] == baselines[key]


def test_standalone_nodes_get_baselines_and_keep_their_adapters(tmp_path: Path) -> None:
    experiment = _experiment(tmp_path, 1, feda2v={"adapter_aggregation_mode": "none"})
    run_dir = run_in_process(experiment, tmp_path / "sa.json", LoopbackGrid(2))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rejected_updates"] == []  # a reply of stats and no adapters is no update
    assert summary["baselines"]["nodes_with_stats"] == 2
    assert 0.0 <= summary["baselines"]["ridge_centralized"]["clip_top1"] <= 1.0


def test_baselines_off_sends_nothing_extra(tmp_path: Path) -> None:
    grid = KeepingGrid(2)
    run_dir = run_in_process(_experiment(tmp_path, 1, federation={"baselines": False}),
                             tmp_path / "off.json", grid)
    extra = {RIDGE_REQUEST, RIDGE_MAPS, RIDGE_STATS, RIDGE_HITS}
    assert grid.kept and not any(keys & extra for _, _, keys in grid.kept)
    assert not any(keys & extra for kind in (MessageType.TRAIN, MessageType.EVALUATE)
                   for _, keys in grid.instructions(kind))
    assert json.loads((run_dir / "summary.json").read_text())["baselines"] is None
    assert "## Baselines" not in (run_dir / "report.md").read_text()
    assert not (run_dir / "ridge-stats.safetensors").exists()


def test_an_in_process_run_is_found_among_earlier_runs_of_its_name(tmp_path: Path) -> None:
    """`run_in_process` returns the directory its own run wrote, however many runs of the same
    experiment name the output folder holds already (a benchmark rerun)."""
    experiment = _experiment(tmp_path, 1, federation={"baselines": False})
    first = run_in_process(experiment, tmp_path / "first.json", LoopbackGrid(2))
    second = run_in_process(experiment, tmp_path / "second.json", LoopbackGrid(2))
    assert first != second
    assert {p.name for p in (tmp_path / "runs").iterdir()} == {first.name, second.name}
    assert all((d / "summary.json").is_file() for d in (first, second))
