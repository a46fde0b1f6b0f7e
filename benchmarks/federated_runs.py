"""One federated run of an experiment file with a few keys changed, by the ServerApp's code
and FedA2V's node code on an in-process grid (`fed_a2v.launch.inprocess`: no Ray, no
SuperLink), so a benchmark compares settings, not engines. Runs sharing `root` share the token
cache; runs of the built-in corpus with the same seed share its data (the seed generates it)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fed_a2v.config.schema import BUILTIN_DATASETS
from fed_a2v.launch.inprocess import LoopbackGrid, run_in_process


def run_experiment(config_path: Path, root: Path, name: str, seed: int, rounds: int,
                   changes: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """`config_path` run for `rounds` rounds with `seed` and `changes` ({section: {key: value}});
    returns its summary.json plus `bench_seconds` (wall)."""
    experiment = json.loads(Path(config_path).read_text())
    experiment["experiment"].update(name=name, seed=seed, output_dir=str(root / "runs"),
                                    cache_dir=str(root / "cache"))
    experiment["federation"]["global_rounds"] = rounds
    kind = experiment["dataset"].get("name", "synthetic")
    if kind in BUILTIN_DATASETS:
        # The seed also generates the built-in corpus: each seed its own, under `root`.
        experiment["dataset"]["path"] = str(root / f"data-{kind}-s{seed}")
    for section, values in (changes or {}).items():
        experiment.setdefault(section, {}).update(values)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    run_dir = run_in_process(experiment, root / f"{name}.json",
                             LoopbackGrid(experiment["federation"]["num_clients"]))
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["bench_seconds"] = time.perf_counter() - start
    return summary
