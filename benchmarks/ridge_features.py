"""Which of the ridge baseline's token statistics carry the class: the centralized ridge map
(λ 1e-3 x the mean diagonal, as the baseline) from each statistic alone, on the corpora of
`default_recipe.py` (one node holding every training clip, folds 1-4; fold 5 held out). Prints
one markdown table, held-out top-1 CLIP / T5, means over the seeds.

    python benchmarks/ridge_features.py speech instruments
"""

from __future__ import annotations

import argparse
from pathlib import Path
from statistics import fmean

import torch
from default_recipe import default_experiment

from fed_a2v.config.schema import NodeConfig
from fed_a2v.config.validate import config_from_dict
from fed_a2v.data.node_corpora import BUILTIN, open_corpus
from fed_a2v.encode.node_data import NodeIdentity, node_data
from fed_a2v.encode.text_targets import targets_for
from fed_a2v.federation.baselines import RidgeStats, encoded_features, solve, top1_hits

# Column ranges of `pooled_features` (width d each, then the constant 1 at 4d).
PARTS = {"all four": ("mean", "std", "token 0", "token 1"), "mean": ("mean",),
         "std": ("std",), "tokens 0 and 1": ("token 0", "token 1"), "mean and std": ("mean", "std")}
ORDER = ("mean", "std", "token 0", "token 1")


def columns(parts: tuple[str, ...], d: int) -> list[int]:
    return [i * d + j for i, name in enumerate(ORDER) if name in parts for j in range(d)] + [4 * d]


def corpus_hits(corpus: str, seed: int, root: Path) -> dict[str, tuple[float, float]]:
    experiment = default_experiment(corpus, 3)
    experiment["experiment"].update(seed=seed, cache_dir=str(root / "cache"))
    experiment["dataset"]["path"] = str(root / f"data-{corpus}-s{seed}")
    del experiment["nodes"]
    experiment["federation"].update(num_clients=1, min_clients=1)
    config = config_from_dict(experiment)
    targets = targets_for(config, open_corpus(config))
    data, _ = node_data(config, NodeIdentity(NodeConfig(), 0, 1, "ridge features"), targets)
    train, test = encoded_features(data.train), encoded_features(data.test)
    d = (train.shape[1] - 1) // 4
    out = {}
    for label, parts in PARTS.items():
        cols = columns(parts, d)
        maps = solve(RidgeStats.of(train[:, cols], data.train.target_ids, len(targets.names)),
                     1e-3)
        out[label] = tuple(top1_hits(maps, test[:, cols], targets.tensors[s],
                                     data.test.target_ids) / len(data.test)
                           for s in ("clip", "t5"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpora", nargs="+", choices=sorted(BUILTIN))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--root", type=Path, default=Path("/tmp/feda2v-default-recipe"))
    args = parser.parse_args()
    torch.manual_seed(0)
    print("| corpus | " + " | ".join(PARTS) + " |")
    print("|---" * (len(PARTS) + 1) + "|")
    for corpus in args.corpora:
        runs = [corpus_hits(corpus, seed, args.root) for seed in range(args.seeds)]
        cells = [" / ".join(f"{fmean(r[label][i] for r in runs):.3f}" for i in (0, 1))
                 for label in PARTS]
        print(f"| `{corpus}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
