"""`flwr run .` on the app as shipped: pyproject's run config names configs/quickstart.json."""

from __future__ import annotations

import json
from pathlib import Path

from fed_a2v.launch.host import COMPLETED

from drills import Federation


def test_flwr_run_dot_uses_the_shipped_quickstart(tmp_path: Path) -> None:
    # The SuperLink runs in tmp_path: the relative config path is found in the app directory,
    # the relative data and output paths land in the working directory.
    with Federation(tmp_path, simulation=True) as federation:
        entry = federation.run({"rounds": 1,
                                "set": "training.batch_size=8 federation.local_epochs=1"},
                               federation_config={"num-supernodes": 3,
                                                  "client-resources-num-cpus": 1})
    assert entry["status"] == COMPLETED, entry.get("status-details")
    (run_dir,) = (tmp_path / "runs").glob("quickstart-*")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [1]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["federation"]["global_rounds"] == 1
    # `--run-config set=...` overrides keys of the experiment file, typed.
    assert (config["training"]["batch_size"], config["federation"]["local_epochs"]) == (8, 1)
    assert config["dataset"]["path"] == str(tmp_path / "data" / "synthetic")
    assert json.loads((run_dir / "summary.json").read_text())["num_nodes"] == 3


def test_a_simulated_federation_smaller_than_the_experiment_fails_at_once(tmp_path: Path) -> None:
    # Flower's default simulated federation has 2 SuperNodes; the quickstart needs 3. The run
    # fails before its first round (not after a round timeout) and says what to pass.
    with Federation(tmp_path, simulation=True) as federation:
        entry = federation.run({"rounds": 1}, federation_config={"num-supernodes": 2})
    assert entry["status"] == "finished:failed"
    details = entry.get("status-details", "")
    assert "has 2 SuperNodes" in details and 'num-supernodes=3' in details, details
    assert not list(tmp_path.glob("runs/*/metrics.jsonl"))
