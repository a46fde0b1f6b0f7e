"""The schema's default recipe against the ridge baselines, as a new user meets it: for each
corpus an experiment that sets only the corpus, the built-in models, 3 non-IID nodes (7 of the
10 classes each, as `configs/speech.json` deals them), the rounds and the local epochs; every
other key keeps the schema's default. 3 seeds (each seed generates its own corpus), in-process
(`federated_runs.py`); prints one markdown table, means over the seeds, CLIP / T5.

    python benchmarks/default_recipe.py speech instruments synthetic
    python benchmarks/default_recipe.py italian_speech german_speech spanish_speech --seeds 30
    python benchmarks/default_recipe.py speech --before     # the defaults before the recipe
    python benchmarks/default_recipe.py speech --one-node   # one node holding every clip
    python benchmarks/default_recipe.py speech --iid        # 3 nodes holding every class
    python benchmarks/default_recipe.py speech --set feda2v.retrieval_loss_weight=0.3
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

from corpora_vs_ridge import SPACES, corpus_row, table
from federated_runs import run_experiment

from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.overrides import apply_overrides
from fed_a2v.data.node_corpora import BUILTIN

# The schema's defaults before the default recipe of docs/corpora.md (issue #23): full adapters
# on the pooled latents alone, MSE alone, learning rate 1e-3.
BEFORE = {"training": {"learning_rate": 1e-3},
          "feda2v": {"span_adapters": [], "adapter_token_statistics": False,
                     "retrieval_loss_weight": 0.0}}

# Which of a corpus's first 10 classes each node holds: every class on one to three nodes.
NODE_CLASSES = ((0, 1, 2, 3, 4, 5, 6), (3, 4, 5, 6, 7, 8, 9), (0, 1, 2, 7, 8, 9, 6))
EVERY_CLASS = tuple(range(10))
# `classes`: the experiment; `iid`: 3 nodes holding every class (each a third of every class's
# clips, so every training clip is used, where `classes` leaves a class's shards on the nodes
# that do not hold it unused); `one-node`: one node holding every clip (a centralized reference).
DEALS = {"classes": NODE_CLASSES, "iid": (EVERY_CLASS,) * 3, "one-node": (EVERY_CLASS,)}


def default_experiment(corpus: str, local_epochs: int, deal: str = "classes") -> dict[str, Any]:
    """The experiment a new user writes for `corpus`: nothing but what the issue lists; `deal`
    (`DEALS`) which classes each node holds."""
    classes = BUILTIN[corpus].classes[:10]
    picks_per_node = DEALS[deal]
    return {
        "experiment": {"name": corpus, "seed": 0, "output_dir": "runs", "device": "cpu"},
        "federation": {"global_rounds": 15, "num_clients": len(picks_per_node),
                       "min_clients": len(picks_per_node),
                       "local_epochs": local_epochs},
        "dataset": {"name": corpus},
        "feda2v": {"audio_model_name": "builtin:tiny-ast", "clip_model_name": "builtin:tiny-clip",
                   "t5_model_name": "builtin:tiny-t5"},
        "nodes": {str(i): {"selected_classes": [classes[c] for c in picks]}
                  for i, picks in enumerate(picks_per_node)},
    }


def seed_rows(summaries: list[dict[str, Any]], first_seed: int = 0) -> list[str]:
    """One line per seed: FedA2V, centralized ridge, local-only ridge top-1 and cosine."""
    lines = []
    for seed, x in enumerate(summaries, start=first_seed):
        b = x["baselines"]
        cells = [" / ".join(f"{v:.3f}" for v in vals) for vals in (
            [b["fedA2V"][f"{s}_top1"] for s in SPACES],
            [b["ridge_centralized"][f"{s}_top1"] for s in SPACES],
            [b["local_only_ridge"][f"{s}_top1_mean"] for s in SPACES],
            [x[f"eval_{s}_cosine"] for s in SPACES])]
        lines.append(f"seed {seed}: FedA2V {cells[0]} | ridge {cells[1]} | local {cells[2]} | "
                     f"cosine {cells[3]} | {x['bench_seconds']:.0f} s")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpora", nargs="+", choices=sorted(BUILTIN))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--local-epochs", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="change one experiment key in every run")
    parser.add_argument("--one-node", dest="deal", action="store_const", const="one-node",
                        default="classes",
                        help="one node holding every training clip (scored on every held-out clip)")
    parser.add_argument("--iid", dest="deal", action="store_const", const="iid",
                        help="3 nodes holding every class (every training clip used)")
    parser.add_argument("--before", action="store_true",
                        help="the defaults before the default recipe (BEFORE), then --set")
    parser.add_argument("--tag", default="defaults",
                        help="names this arm's runs (arms run side by side share --root)")
    parser.add_argument("--root", type=Path, default=Path("/tmp/feda2v-default-recipe"),
                        help="where the corpora, token caches and runs go")
    args = parser.parse_args()
    try:
        changes = apply_overrides(copy.deepcopy(BEFORE) if args.before else {}, args.set)
    except ConfigError as err:
        raise SystemExit(str(err)) from err
    rows = {}
    for corpus in args.corpora:
        path = args.root / f"{corpus}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(default_experiment(corpus, args.local_epochs, args.deal)))
        summaries = [run_experiment(path, args.root, f"{corpus}-{args.tag}-s{seed}", seed,
                                    args.rounds, changes)
                     for seed in range(args.first_seed, args.first_seed + args.seeds)]
        print(f"`{corpus}`", *seed_rows(summaries, args.first_seed), sep="\n", flush=True)
        rows[corpus] = corpus_row(summaries)
    last_seed = args.first_seed + args.seeds - 1
    print(f"{args.rounds} rounds x {args.local_epochs} local epochs, "
          f"seeds {args.first_seed}-{last_seed}, "
          f"schema defaults{' before the recipe' if args.before else ''}, means over seeds, "
          "CLIP / T5"
          + (f"; changed: {json.dumps(changes)}" if changes else ""))
    print(table(rows))


if __name__ == "__main__":
    main()
