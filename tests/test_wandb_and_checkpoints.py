"""W&B logging (the real `wandb` package, offline) and adapter checkpoints saved under
`feda2v.adapter_checkpoint_dir` and loaded to start a new run."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fed_a2v.cli import EXIT_CONFIG, main
from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.schema import Config
from fed_a2v.config.validate import config_from_dict
from fed_a2v.model.adapters import adapters_state, build_adapters
from fed_a2v.runs.checkpoints import AdapterCheckpoints
from fed_a2v.runs.run_dir import RunRecorder
from fed_a2v.runs.wandb_log import require_wandb

from drills import APP_DIR, experiment_dict

NODES = {"node 0": {"flower_node_id": 11, "train_clip_loss": 0.5, "eval_clip_top1": 0.25},
         "node 1": {"flower_node_id": 12, "train_clip_loss": 0.7}}


def wandb_records(path: Path) -> list[dict]:
    """Every record of an offline run's `.wandb` log, through wandb's own reader."""
    done = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect",
                           "--json", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def offline_runs(wandb_dir: Path) -> list[Path]:
    return sorted((wandb_dir / "wandb").glob("offline-run-*"))


def wandb_config(**wandb: object) -> Config:
    config = Config()
    config.experiment.name = "wb"
    config.wandb.disabled = False
    for key, value in wandb.items():
        setattr(config.wandb, key, value)
    return config


def test_the_recorder_logs_every_tensorboard_series_to_an_offline_wandb_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    state = {"clip.w": torch.ones(2), "t5.w": torch.zeros(3)}
    recorder = RunRecorder(tmp_path / "run-a", wandb_config(project="p"))
    for r in (1, 2):
        recorder.end_round(r, {"train_clip_loss": 1.0 / r, "eval_t5_mse": 2.0 * r,
                               "clip_lr": 0.01, "train_nodes": 2}, state, NODES)
    recorder.finish(None, 0, 2, 2, {})
    [run] = offline_runs(tmp_path / "wb")
    records = wandb_records(run)
    history = {r["history"]["step"]["num"]: r["history"]["item"]
               for r in records if r["type"] == "history"}
    assert sorted(history) == [1, 2]
    for r in (1, 2):
        assert history[r]["train/clip_loss"] == pytest.approx(1.0 / r)
        assert history[r]["eval/t5_mse"] == pytest.approx(2.0 * r)
        assert history[r]["clip/lr"] == pytest.approx(0.01)
        assert history[r]["train/nodes"] == 2
        assert history[r]["node 0/eval_clip_top1"] == pytest.approx(0.25)
        assert history[r]["node 1/train_clip_loss"] == pytest.approx(0.7)
        assert not any("flower_node_id" in key for key in history[r])  # an id, not a series
        assert "eval/clip_mse" not in history[r]  # absent values are not logged as 0
    [start] = [r["run"] for r in records if r["type"] == "run"]
    assert start["display_name"] == "run-a" and start["project"] == "p"
    assert start["config"]["update"]["experiment"]["name"] == "wb"
    assert [r["exit"].get("exit_code", 0) for r in records if r["type"] == "exit"] == [0]
    summary = {}
    for r in records:
        if r["type"] == "summary":
            summary.update(r["summary"].get("update", {}))
    assert summary["rounds"] == 2 and summary["num_nodes"] == 2


def test_without_wandb_dir_the_offline_run_stays_in_the_run_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    state = {"clip.w": torch.ones(2)}
    recorder = RunRecorder(tmp_path / "run", wandb_config(mode="offline"))
    recorder.end_round(1, {"train_clip_loss": 0.5}, state)
    recorder.finish(None, 0, 1, 1, {})
    [run] = offline_runs(tmp_path / "run")
    assert any(r["type"] == "history" for r in wandb_records(run))
    assert not (tmp_path / "wandb").exists()


def test_a_resumed_run_logs_its_remaining_rounds_to_a_new_wandb_run_in_the_same_group(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    state = {"clip.w": torch.ones(2)}
    RunRecorder(tmp_path / "run", wandb_config()).end_round(1, {"train_clip_loss": 1.0}, state)
    # The first part stopped without finishing (a killed server); wandb closes it at exit.
    resumed = RunRecorder(tmp_path / "run", wandb_config(), resume=True)
    resumed.resume_point()
    resumed.end_round(2, {"train_clip_loss": 0.5}, state)
    resumed.finish(None, 0, 2, 1, {})
    parts = []
    for run in offline_runs(tmp_path / "wb"):
        records = wandb_records(run)
        [start] = [r["run"] for r in records if r["type"] == "run"]
        steps = [r["history"]["step"]["num"] for r in records if r["type"] == "history"]
        parts.append((start["run_group"], start["job_type"], steps))
    assert sorted(parts, key=lambda p: p[2]) == [("run", "train", [1]), ("run", "resume", [2])]


def test_online_without_credentials_is_a_config_error_naming_the_ways_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no wandb settings
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    with pytest.raises(ConfigError, match=r"wandb login.*'wandb.mode'.*offline.*"
                                          r"'wandb.disabled'"):
        RunRecorder(tmp_path / "run", wandb_config(mode="online"))


def test_wandb_asked_for_but_not_installed_is_a_config_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now fails
    with pytest.raises(ConfigError, match=r"'wandb.disabled'.*pip install 'fed-a2v\[wandb\]'"):
        require_wandb(wandb_config())
    with pytest.raises(ConfigError, match="wandb.disabled"):
        RunRecorder(tmp_path / "run", wandb_config())
    # `fed-a2v simulate` says so before it starts anything.
    experiment = experiment_dict(tmp_path, "wb", output_dir=tmp_path / "out")
    experiment["wandb"] = {"disabled": False}
    (tmp_path / "wb.json").write_text(json.dumps(experiment))
    handler = signal.getsignal(signal.SIGTERM)  # `simulate` sets its own
    try:
        assert main(["simulate", "--config", str(tmp_path / "wb.json")]) == EXIT_CONFIG
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert not (tmp_path / "out").exists()
    # Disabled (the default): wandb is never imported, so its absence is fine.
    assert require_wandb(Config()) is None
    RunRecorder(tmp_path / "other", Config()).end_round(1, {}, {"clip.w": torch.ones(1)})


# ---------------------------------------------------------------------------------------------
# Adapter checkpoints


def ckpt_config(tmp_path: Path, **feda2v: object) -> Config:
    config = Config()
    config.federation.global_rounds = 5
    config.feda2v.adapter_checkpoint_dir = str(tmp_path / "ckpt")
    config.feda2v.adapter_save_checkpoint = True
    config.feda2v.adapter_checkpoint_frequency = 2
    config.feda2v.adapter_hidden_dim = 16
    for key, value in feda2v.items():
        setattr(config.feda2v, key, value)
    return config


def adapter_state(config: Config, d_clip: int = 8) -> dict[str, torch.Tensor]:
    return adapters_state(build_adapters(16, d_clip, 12, config.feda2v, seed=0, target_rows=3))


def save_rounds(checkpoints: AdapterCheckpoints, state: dict[str, torch.Tensor],
                rounds: int) -> dict[int, list[str]]:
    """Offer every round's state (`state` + round) and note what was written."""
    return {r: sorted(p.name for p in checkpoints.save_if_due(
        r, {k: v + r for k, v in state.items()})) for r in range(1, rounds + 1)}


@pytest.mark.parametrize("per_type", [True, False])
def test_checkpoints_are_saved_at_the_frequency_and_the_last_round_and_load_the_latest(
        tmp_path: Path, per_type: bool) -> None:
    config = ckpt_config(tmp_path, adapter_checkpoint_per_type=per_type)
    state = adapter_state(config)
    checkpoints = AdapterCheckpoints(config, tmp_path / "run", {"d_audio": 16, "d_clip": 8})
    written = save_rounds(checkpoints, state, 5)
    names = {r: ([f"adapter_clip_round{r}.safetensors", f"adapter_t5_round{r}.safetensors"]
                 if per_type else [f"adapter_round{r}.safetensors"]) for r in (2, 4, 5)}
    assert written == {1: [], 2: names[2], 3: [], 4: names[4], 5: names[5]}
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == sorted(
        sum(names.values(), []))
    with safe_open(str(tmp_path / "ckpt" / names[4][0]), "pt") as f:
        meta = f.metadata()
    assert meta["round"] == "4" and meta["run_dir"] == str(tmp_path / "run")
    assert meta["adapters"] == "clip,t5" and meta["diffusion_type"] == "flux"
    assert meta["audio_model"] == "builtin:tiny-ast"
    assert json.loads(meta["dims"]) == {"d_audio": 16, "d_clip": 8}
    if per_type:
        assert meta["adapter"] == "clip"
        assert all(k.startswith(("pool.", "stats.", "head.")) for k in load_file(
            str(tmp_path / "ckpt" / names[4][0])))
    # A new run starts from the latest round, whichever layout wrote it.
    fresh = ckpt_config(tmp_path, adapter_checkpoint_per_type=not per_type)
    loaded_round, loaded, files = AdapterCheckpoints(fresh, tmp_path, {}).load_latest(state)
    assert loaded_round == 5 and sorted(p.name for p in files) == names[5]
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k] + 5) for k in state)


def test_a_later_round_in_the_other_layout_wins(tmp_path: Path) -> None:
    config = ckpt_config(tmp_path)
    state = adapter_state(config)
    AdapterCheckpoints(config, tmp_path, {}).save_if_due(4, state)
    whole = ckpt_config(tmp_path, adapter_checkpoint_per_type=False,
                        adapter_checkpoint_frequency=1)
    AdapterCheckpoints(whole, tmp_path, {}).save_if_due(7, {k: v * 2 for k, v in state.items()})
    loaded_round, loaded, _ = AdapterCheckpoints(config, tmp_path, {}).load_latest(state)
    assert loaded_round == 7 and torch.equal(loaded["t5.head.0.bias"],
                                             state["t5.head.0.bias"] * 2)


def test_loading_from_an_empty_or_missing_directory_names_the_directory_and_key(
        tmp_path: Path) -> None:
    config = ckpt_config(tmp_path, adapter_load_checkpoint=True)
    for _ in range(2):  # missing, then empty
        with pytest.raises(ConfigError, match=rf"{tmp_path / 'ckpt'}.*"
                                              r"'feda2v.adapter_checkpoint_dir'.*no adapter "
                                              r"checkpoint"):
            AdapterCheckpoints(config, tmp_path, {}).load_latest(adapter_state(config))
        (tmp_path / "ckpt").mkdir(exist_ok=True)
    # Another base name's files are not ours.
    other = ckpt_config(tmp_path, adapter_checkpoint_base_name="other")
    AdapterCheckpoints(other, tmp_path, {}).save_if_due(2, adapter_state(config))
    with pytest.raises(ConfigError, match="no adapter checkpoint"):
        AdapterCheckpoints(config, tmp_path, {}).load_latest(adapter_state(config))


def test_an_upstream_pt_checkpoint_is_refused_with_the_reason(tmp_path: Path) -> None:
    config = ckpt_config(tmp_path, adapter_load_checkpoint=True)
    (tmp_path / "ckpt").mkdir()
    torch.save({"adapter_state_dict": {}, "round": 5},
               tmp_path / "ckpt" / "adapter_node0_clip_adapter_round_5_class_dog.pt")
    with pytest.raises(ConfigError, match=r"adapter_node0_clip_adapter_round_5_class_dog.pt.*"
                                          r"different architecture.*4096"):
        AdapterCheckpoints(config, tmp_path, {}).load_latest(adapter_state(config))


def test_adapters_that_do_not_fit_name_the_tensor_and_both_shapes(tmp_path: Path) -> None:
    config = ckpt_config(tmp_path)
    AdapterCheckpoints(config, tmp_path, {}).save_if_due(2, adapter_state(config, d_clip=8))
    wider = adapter_state(config, d_clip=10)
    with pytest.raises(ConfigError, match=r"'clip.head.4.weight' has shape \(8, 16\) but this "
                                          r"run's adapters need \(10, 16\)"):
        AdapterCheckpoints(config, tmp_path, {}).load_latest(wider)
    # A checkpoint lacking an adapter the run has (files of one adapter deleted).
    (tmp_path / "ckpt" / "adapter_t5_round2.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"no tensor 't5\."):
        AdapterCheckpoints(config, tmp_path, {}).load_latest(adapter_state(config))
    # One holding an adapter the run lacks.
    save_file({"w": torch.ones(1)}, str(tmp_path / "ckpt" / "adapter_t5_round2.safetensors"))
    only_clip = {k: v for k, v in adapter_state(config).items() if k.startswith("clip.")}
    with pytest.raises(ConfigError, match=r"tensor 't5.w'.*no place"):
        AdapterCheckpoints(config, tmp_path, {}).load_latest(only_clip)


def test_standalone_runs_save_no_checkpoints_and_cannot_load_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = ckpt_config(tmp_path, adapter_aggregation_mode="none")
    with caplog.at_level(logging.WARNING, logger="fed_a2v.runs.checkpoints"):
        checkpoints = AdapterCheckpoints(config, tmp_path, {})
    assert "standalone" in caplog.text and "no global adapters" in caplog.text
    assert save_rounds(checkpoints, adapter_state(config), 5) == {r: [] for r in range(1, 6)}
    assert not (tmp_path / "ckpt").exists()
    raw = experiment_dict(tmp_path, "sa", feda2v={"adapter_aggregation_mode": "none",
                                                  "adapter_load_checkpoint": True})
    with pytest.raises(ConfigError, match=r"x.json: 'feda2v.adapter_load_checkpoint'.*"
                                          r"standalone run has no global adapters"):
        config_from_dict(raw, "x.json")


def test_a_relative_checkpoint_directory_resolves_against_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = Config()
    config.feda2v.adapter_checkpoint_dir = "ckpts/a"
    config.make_paths_absolute()
    assert config.feda2v.adapter_checkpoint_dir == str(tmp_path / "ckpts" / "a")


# ---------------------------------------------------------------------------------------------
# Real simulations


def simulate(experiment: dict, path: Path, env: dict | None = None
             ) -> tuple[subprocess.CompletedProcess, Path]:
    path.write_text(json.dumps(experiment))
    done = subprocess.run([sys.executable, "-m", "fed_a2v.cli", "simulate", "--config",
                           str(path)], capture_output=True, text=True, timeout=900,
                          cwd=APP_DIR, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-4000:]
    return done, Path(done.stdout.strip().splitlines()[-1])


def final_adapters(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


@pytest.mark.slow
def test_a_simulation_with_wandb_offline_completes_and_leaves_an_offline_run(
        tmp_path: Path) -> None:
    experiment = experiment_dict(tmp_path, "wandb-sim", federation={"global_rounds": 2})
    experiment["wandb"] = {"disabled": False, "project": "fed-a2v-test"}
    _, run_dir = simulate(experiment, tmp_path / "wandb-sim.json",
                          {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wb")})
    [run] = offline_runs(tmp_path / "wb")
    records = wandb_records(run)
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    assert [h["_step"] for h in history] == [1, 2]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for h, m in zip(history, metrics, strict=True):
        assert h["train/clip_loss"] == pytest.approx(m["train_clip_loss"])
        assert h["eval/clip_top1"] == pytest.approx(m["eval_clip_top1"])
    nodes = [json.loads(line) for line in (run_dir / "nodes.jsonl").read_text().splitlines()]
    assert len({n["node"] for n in nodes}) == 3
    for n in nodes:
        assert history[n["round"] - 1][f"{n['node']}/train_clip_loss"] == pytest.approx(
            n["train_clip_loss"])
    [start] = [r["run"] for r in records if r["type"] == "run"]
    assert start["display_name"] == run_dir.name
    assert any(r["type"] == "exit" for r in records)


@pytest.mark.slow
def test_run_b_starts_from_the_adapters_run_a_saved(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    a = experiment_dict(tmp_path, "a", federation={"global_rounds": 2},
                        feda2v={"adapter_save_checkpoint": True,
                                "adapter_checkpoint_frequency": 1,
                                "adapter_checkpoint_dir": str(ckpt)})
    _, run_a = simulate(a, tmp_path / "a.json")
    assert sorted(p.name for p in ckpt.iterdir()) == [
        f"adapter_{n}_round{r}.safetensors" for n in ("clip", "t5") for r in (1, 2)]
    # B trains one round from A's round-2 adapters with a learning rate too small to move them:
    # its adapters and evaluation are then A's final ones (a fresh start would differ wholly).
    b = experiment_dict(tmp_path, "b", federation={"global_rounds": 1},
                        feda2v={"adapter_load_checkpoint": True,
                                "adapter_checkpoint_dir": str(ckpt)})
    b["training"]["learning_rate"] = 1e-12
    _, run_b = simulate(b, tmp_path / "b.json")
    summary = json.loads((run_b / "summary.json").read_text())
    assert summary["started_from_checkpoint"]["round"] == 2
    a_final, b_final = final_adapters(run_a), final_adapters(run_b)
    assert a_final.keys() == b_final.keys()
    for key in a_final:
        assert torch.allclose(a_final[key], b_final[key], atol=1e-6), key
    a_last = json.loads((run_a / "metrics.jsonl").read_text().splitlines()[-1])
    b_last = json.loads((run_b / "metrics.jsonl").read_text().splitlines()[-1])
    assert b_last["eval_clip_mse"] == pytest.approx(a_last["eval_clip_mse"], rel=1e-4)
