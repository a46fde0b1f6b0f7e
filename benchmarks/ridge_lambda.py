"""What the ridge bar trades: for finished runs, the centralized ridge map solved from the run's
own statistics (`ridge-stats.safetensors`) at several λ, scored on the run's held-out clips
(every node's, as the run scores them) by top-1 and by cosine to the own target, beside the
run's final FedA2V figures on the same clips. A small λ commits to a target row and pays in
cosine; a large one hedges toward what every row shares. Prints one markdown table, means over
the runs, CLIP / T5.

    python benchmarks/ridge_lambda.py /tmp/feda2v-default-recipe/runs/italian_speech-defaults-s*
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from statistics import fmean

import torch
from safetensors.torch import load_file

from fed_a2v.config.load import load_config
from fed_a2v.encode.encoded_set import EncodedSet
from fed_a2v.encode.node_data import NodeIdentity, node_data
from fed_a2v.federation.baselines import (
    encoded_features,
    nearest_rows,
    own_cosines,
    predict_rows,
    saved_total,
    solve,
)
from fed_a2v.model.pretrained import FedA2VAdapters

SPACES = ("clip", "t5")
LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def held_out(run_dir: Path, package: FedA2VAdapters) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooled features and target rows of every simulated node's held-out clips."""
    config = load_config(run_dir / "config.json")
    tests: list[EncodedSet] = []
    for i in range(config.federation.num_clients):
        ident = NodeIdentity(config.node(i), i, config.federation.num_clients, f"node {i}")
        tests.append(node_data(config, ident, package.targets)[0].test)
    return (torch.cat([encoded_features(t) for t in tests]),
            torch.cat([t.target_ids for t in tests]))


def run_scores(run_dir: Path, lambdas: tuple[float, ...]) -> dict[str, dict[str, float]]:
    """Row label -> `<space>_top1` / `<space>_cosine`: FedA2V's (from the run's summary) and
    the centralized ridge's at each λ."""
    package = FedA2VAdapters.from_pretrained(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    tensors = load_file(str(run_dir / "ridge-stats.safetensors"))
    stats = saved_total(tensors, *tensors["total.sums"].shape)
    x, rows = held_out(run_dir, package)
    scores = {"FedA2V": {f"{s}_{m}": summary[f"eval_{s}_{m}"]
                         for s in SPACES for m in ("top1", "cosine")}}
    for lam in lambdas:
        coeffs = predict_rows(solve(stats, lam), x)
        own = scores[f"ridge, λ {lam:g}"] = {}
        for s in SPACES:
            table = package.targets.tensors[s]
            own[f"{s}_top1"] = float((nearest_rows(coeffs, table) == rows).double().mean())
            own[f"{s}_cosine"] = float(own_cosines(coeffs, table, rows).mean())
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    parser.add_argument("--lambdas", type=float, nargs="+", default=list(LAMBDAS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    runs = [run_scores(run_dir, tuple(args.lambdas)) for run_dir in args.runs]
    print(f"{len(runs)} runs: " + ", ".join(r.name for r in args.runs))
    print("| | held-out top-1 | held-out cosine |\n|---|---|---|")
    for label in runs[0]:
        cells = [" / ".join(f"{fmean(r[label][f'{s}_{m}'] for r in runs):.3f}" for s in SPACES)
                 for m in ("top1", "cosine")]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("CLIP / T5, means over the runs; the runs' own baseline uses "
          "federation.baseline_ridge_lambda (1e-3 unless set)")


if __name__ == "__main__":
    main()
