"""How alike an experiment's target rows are: the mean and the largest cosine similarity between
two different rows of each target table (CLIP, T5 flattened), the share of the values MSE weighs
that tell the rows apart. Prints one markdown table.

    python benchmarks/target_similarity.py configs/quickstart.json configs/speech.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fed_a2v.config.load import load_config
from fed_a2v.data.node_corpora import open_corpus
from fed_a2v.encode.text_targets import targets_for
from fed_a2v.model.losses import unit_rows


def row_cosines(table: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every pair of different rows of `(K, ...)`, `(K * (K - 1),)`."""
    rows = unit_rows(table.double())
    return (rows @ rows.T)[~torch.eye(len(rows), dtype=torch.bool)]


def class_share(table: torch.Tensor) -> float:
    """Of the squared values of `(K, ...)`'s rows (what MSE weighs), the share that is their
    spread about the mean row, so tells the rows apart."""
    rows = table.double().flatten(1)
    return float((rows - rows.mean(0)).pow(2).sum() / rows.pow(2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", type=Path)
    args = parser.parse_args()
    print("| experiment | corpus | space | rows | mean cosine between rows | largest | "
          "share of the squared values that differ between rows |")
    print("|---|---|---|---|---|---|---|")
    for path in args.configs:
        config = load_config(path)
        targets = targets_for(config, open_corpus(config))
        for name, table in targets.tensors.items():
            cos = row_cosines(table)
            print(f"| `{path.name}` | `{config.dataset.name}` | {name} | {len(table)} | "
                  f"{cos.mean():.2f} | {cos.max():.2f} | {class_share(table):.2f} |")


if __name__ == "__main__":
    main()
