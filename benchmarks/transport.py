"""Held-out top-1 and update bytes per round for each `federation.transport_dtype`.

The quickstart (configs/quickstart.json: built-in corpus and models, 3 nodes, its own rounds)
run once per dtype and seed, `transport_dtype` the only difference, on an in-process grid
(`benchmarks/federated_runs.py`); a one-round run first fills the shared token cache. Reports,
per dtype, the mean held-out top-1 over the seeds (CLIP and T5), its gap to fp32 in points, and
the update bytes per round against fp32.

    .venv/bin/python benchmarks/transport.py [--seeds 0 1 2] [--rounds N] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from pathlib import Path

import torch
from federated_runs import run_experiment
from fragments import OUT_DIR, row, write_fragment
from tqdm import tqdm

from fed_a2v.config.schema import TRANSPORT_DTYPES

METRICS = ("eval_clip_top1", "eval_t5_top1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/quickstart.json"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, help="default: the config's global_rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    rounds = args.rounds or json.loads(args.config.read_text())["federation"]["global_rounds"]

    top1: dict[str, dict[str, list[float]]] = {d: {m: [] for m in METRICS}
                                               for d in TRANSPORT_DTYPES}
    update_bytes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for seed in args.seeds:  # each seed generates its own corpus: fill its token cache
            run_experiment(args.config, root, f"warm-cache-s{seed}", seed, 1)
        runs = [(d, s) for s in args.seeds for d in TRANSPORT_DTYPES]
        for dtype, seed in tqdm(runs, desc="transport runs"):
            summary = run_experiment(args.config, root, f"{dtype}-seed{seed}", seed, rounds,
                                     {"federation": {"transport_dtype": dtype}})
            for metric in METRICS:
                top1[dtype][metric].append(float(summary[metric]))
            update_bytes[dtype] = max(summary["update_bytes_received_per_round"])

    mean = {d: {m: statistics.mean(v) for m, v in top1[d].items()} for d in TRANSPORT_DTYPES}
    rows = []
    for dtype in TRANSPORT_DTYPES:
        share = update_bytes[dtype] / update_bytes["fp32"]
        rows.append(row(f"{dtype}: update bytes per round (3 nodes)", update_bytes[dtype],
                        "B", f"{share:.1%} of fp32"))
        for metric in METRICS:
            gap = 100 * (mean[dtype][metric] - mean["fp32"][metric])
            values = ", ".join(f"{v:.3f}" for v in top1[dtype][metric])
            rows.append(row(f"{dtype}: held-out {metric.split('_')[1].upper()} top-1, mean "
                            f"of seeds {args.seeds}", round(mean[dtype][metric], 4), "",
                            f"{gap:+.1f} points vs fp32 (seeds: {values})"))
    write_fragment("transport", "Update transport: bytes and held-out top-1 per dtype",
                   f"python benchmarks/transport.py --seeds {' '.join(map(str, args.seeds))}",
                   rows, [f"configs/quickstart.json, {rounds} rounds, 3 nodes, in-process grid; "
                          "the global adapters go to the nodes in fp32 either way, only the "
                          "updates travel in the dtype."], args.out_dir)


if __name__ == "__main__":
    main()
