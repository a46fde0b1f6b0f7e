"""KD aggregation against FedAvg where FedAvg is weakest: nodes that hold disjoint classes.

For each corpus, its first `--classes` classes dealt to `--nodes` nodes, each node every clip of
its own (class j on node j mod N), run in-process (`federated_runs.py`) under these arms, 3 seeds:

- `fedavg`: FedAvg by examples (`weighted_average`);
- `kd`: FedAvg, then distilled on samples of the nodes' generators (the default `gaussian`),
  each class taught by the nodes that hold it;
- `kd_oracle`: the same on the nodes' real training tokens (`generator_type` `replay`: the
  upper bound of any generator);
- `kd_noise`: the same on one class-blind Gaussian per node (`noise`: the lower bound);
- `kd_all_nodes`: `kd` with upstream's teacher, every node's adapters for every class;
- `centralized`: one node holding every clip.

Prints one markdown table: held-out top-1, CLIP / T5, means over the seeds.

    python benchmarks/kd_study.py synthetic speech instruments
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from federated_runs import run_experiment

from fed_a2v.data.node_corpora import BUILTIN

SPACES = ("clip", "t5")
ARMS: dict[str, dict[str, Any]] = {
    "fedavg": {"adapter_aggregation_mode": "weighted_average"},
    "kd": {"adapter_aggregation_mode": "kd"},
    "kd_oracle": {"adapter_aggregation_mode": "kd", "generator_type": "replay"},
    "kd_noise": {"adapter_aggregation_mode": "kd", "generator_type": "noise"},
    "kd_all_nodes": {"adapter_aggregation_mode": "kd", "kd_teacher": "all_nodes"},
    "centralized": {"adapter_aggregation_mode": "weighted_average"},
}


def experiment(corpus: str, classes: int, nodes: int, local_epochs: int,
               centralized: bool) -> dict[str, Any]:
    names = BUILTIN[corpus].classes[:classes]
    groups = [names] if centralized else [names[i::nodes] for i in range(nodes)]
    return {
        "experiment": {"name": corpus, "seed": 0, "output_dir": "runs", "device": "cpu"},
        "federation": {"global_rounds": 10, "num_clients": len(groups),
                       "min_clients": len(groups), "local_epochs": local_epochs},
        # every node holds every clip of its classes (the default "nodes" would give each a
        # stratified shard: a fifth of its classes' clips with 5 nodes)
        "dataset": {"name": corpus, "partition": "classes"},
        "nodes": {str(i): {"selected_classes": g} for i, g in enumerate(groups)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpora", nargs="+", choices=sorted(BUILTIN))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="a feda2v key for every KD arm, e.g. kd_training_epochs=10")
    parser.add_argument("--tag", default="kd")
    parser.add_argument("--root", type=Path, default=Path("/tmp/feda2v-kd-study"))
    args = parser.parse_args()
    extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    rows = {}
    for corpus in args.corpora:
        for arm in args.arms:
            central = arm == "centralized"
            path = args.root / f"{corpus}-{'central' if central else 'disjoint'}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(experiment(corpus, args.classes, args.nodes,
                                                  args.local_epochs, central)))
            feda2v = {**ARMS[arm], **(extra if arm.startswith("kd") else {})}
            tops = []
            for seed in range(args.seeds):
                s = run_experiment(path, args.root, f"{corpus}-{args.tag}-{arm}-s{seed}", seed,
                                   args.rounds, {"feda2v": feda2v})
                tops.append([s["baselines"]["fedA2V"][f"{x}_top1"] for x in SPACES])
                print(f"{corpus} {arm} seed {seed}: " + " / ".join(f"{v:.3f}" for v in tops[-1]),
                      flush=True)
            rows[(corpus, arm)] = [statistics.mean(t[i] for t in tops) for i in range(2)]
    print(f"\n{args.classes} classes, {args.nodes} class-disjoint nodes, {args.rounds} rounds x "
          f"{args.local_epochs} local epochs, seeds 0-{args.seeds - 1}; held-out top-1, "
          f"CLIP / T5, means over seeds" + (f"; KD arms: {json.dumps(extra)}" if extra else ""))
    print("| corpus | " + " | ".join(args.arms) + " |")
    print("|---|" + "---|" * len(args.arms))
    for corpus in args.corpora:
        print(f"| `{corpus}` | " + " | ".join(
            " / ".join(f"{v:.3f}" for v in rows[(corpus, arm)]) for arm in args.arms) + " |")


if __name__ == "__main__":
    main()
