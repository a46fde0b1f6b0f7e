"""`flwr run .` on the app as shipped: pyproject's run config names configs/quickstart.json."""

from __future__ import annotations

import json
from pathlib import Path

from fed_a2v.launch import (
    COMPLETED,
    flower_env,
    free_port,
    start_superlink,
    submit_run,
    wait_for_run,
    write_connection,
)

APP_DIR = Path(__file__).resolve().parent.parent


def test_flwr_run_dot_uses_the_shipped_quickstart(tmp_path: Path) -> None:
    env = flower_env(tmp_path / "flwr-home")
    port = free_port()
    write_connection(tmp_path / "flwr-home", "local-sim", f"127.0.0.1:{port}")
    # The SuperLink runs in tmp_path: the relative config path is found in the app directory,
    # the relative data and output paths land in the working directory.
    superlink = start_superlink(env, port, tmp_path / "superlink.log", simulation=True,
                                cwd=tmp_path)
    try:
        run_id = submit_run(APP_DIR, "local-sim", env, run_config={"rounds": 1},
                            federation_config={"num-supernodes": 3,
                                               "client-resources-num-cpus": 1})
        entry = wait_for_run(run_id, "local-sim", env, timeout=400)
    finally:
        superlink.stop()
    assert entry["status"] == COMPLETED, entry.get("status-details")
    (run_dir,) = (tmp_path / "runs").glob("quickstart-*")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [1]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["federation"]["global_rounds"] == 1
    assert config["dataset"]["path"] == str(tmp_path / "data" / "synthetic")
    assert json.loads((run_dir / "summary.json").read_text())["num_nodes"] == 3
