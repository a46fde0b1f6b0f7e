"""Where a finished run's final adapters point: on every held-out clip and on every training-fold
clip of the run's classes (one node holding the whole corpus, so clips no node trained on are
in it too), top-1 and cosine to the own target, and the share of clips whose nearest target row
is the most predicted one (chance: 0.10 for 10 balanced classes; 1.0: every clip gets the same
row). A high share with a training-fold top-1 well below 1 is an adapter that has not yet
moved far from what every row shares: under-fit, not over-fit. Prints one markdown table.

    python benchmarks/prediction_spread.py /tmp/feda2v-default-recipe/runs/italian_speech-*
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path

import torch

from fed_a2v.config.load import load_config
from fed_a2v.config.schema import NodeConfig
from fed_a2v.encode.encoded_set import EncodedSet
from fed_a2v.encode.node_data import NodeIdentity, node_data
from fed_a2v.model.evaluation import evaluate_adapters
from fed_a2v.model.losses import row_similarities, unit_rows
from fed_a2v.model.pretrained import FedA2VAdapters

CPU = torch.device("cpu")


@torch.no_grad()
def top_share(package: FedA2VAdapters, name: str, data: EncodedSet) -> float:
    """The share of `data`'s clips whose nearest target row (by cosine) is the most common."""
    tokens = data.tokens.batch(list(range(len(data))))
    nearest = row_similarities(package.adapters[name](tokens),
                               unit_rows(package.targets.tensors[name])).argmax(dim=1)
    return Counter(nearest.tolist()).most_common(1)[0][1] / len(data)


def run_row(run_dir: Path) -> str:
    package = FedA2VAdapters.from_pretrained(run_dir)
    config = load_config(run_dir / "config.json")
    every_clip = NodeIdentity(NodeConfig(selected_classes=list(package.targets.names)), 0, 1,
                              "every clip")
    data, _ = node_data(config, every_clip, package.targets)
    cells = []
    for split, clips in (("eval", data.test), ("train", data.train)):
        scores = evaluate_adapters(package.adapters, clips, package.targets.tensors, 64, CPU,
                                   split)
        for key in ("top1", "cosine"):
            cells.append(" / ".join(f"{scores[f'{split}_{n}_{key}']:.3f}"
                                    for n in package.adapters))
        cells.append(" / ".join(f"{top_share(package, n, clips):.2f}" for n in package.adapters))
    return f"| {run_dir.name} | {len(data.test)} / {len(data.train)} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print("| run | clips held out / training folds | held-out top-1 | held-out cosine | "
          "held-out most-predicted share | training-fold top-1 | training-fold cosine | "
          "training-fold most-predicted share |")
    print("|---|---|---|---|---|---|---|---|")
    for run_dir in args.runs:
        print(run_row(run_dir), flush=True)
    print("CLIP / T5 in every cell")


if __name__ == "__main__":
    main()
