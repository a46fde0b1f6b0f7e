"""FedA2V against the centralized ridge baseline on built-in corpora, over seeds: each corpus's
experiment file run for `--rounds` rounds per seed (each seed generates its own corpus), by the
in-process federation of `federated_runs.py`. Prints one markdown table, means over the seeds.

    python benchmarks/corpora_vs_ridge.py instruments speech
    python benchmarks/corpora_vs_ridge.py quickstart --set feda2v.retrieval_loss_weight=0.3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import fmean
from typing import Any

from federated_runs import run_experiment

from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.overrides import apply_overrides

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SPACES = ("clip", "t5")


def corpus_row(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over seeds of FedA2V's final held-out top-1 and cosine, the ridge baselines' top-1,
    the centralized ridge's held-out cosine (None where a run reported none), and in how many
    seeds FedA2V reached the centralized ridge, per space."""
    row: dict[str, Any] = {"seeds": len(summaries)}
    for s in SPACES:
        fed = [x["baselines"]["fedA2V"][f"{s}_top1"] for x in summaries]
        ridge = [x["baselines"]["ridge_centralized"][f"{s}_top1"] for x in summaries]
        row[s] = {"fed": fmean(fed), "ridge": fmean(ridge),
                  "local": fmean([x["baselines"]["local_only_ridge"][f"{s}_top1_mean"]
                                 for x in summaries]),
                  "chance": fmean([x["baselines"]["chance"][f"{s}_top1"] for x in summaries]),
                  "cosine": fmean([x[f"eval_{s}_cosine"] for x in summaries]),
                  "ridge_cosine": _ridge_cosine(summaries, s),
                  "reached": sum(f >= r for f, r in zip(fed, ridge, strict=True))}
    return row


def _ridge_cosine(summaries: list[dict[str, Any]], space: str) -> float | None:
    values = [(x["baselines"].get("held_out_cosine") or {}).get("ridge_centralized", {})
              .get(space) for x in summaries]
    return None if None in values else fmean(values)


def table(rows: dict[str, dict[str, Any]]) -> str:
    def pair(row: dict[str, Any], key: str, fmt: str = ".3f") -> str:
        return " / ".join("–" if row[s][key] is None else format(row[s][key], fmt)
                          for s in SPACES)

    lines = ["| corpus | FedA2V top-1 | ridge, centralized | gap | seeds FedA2V ≥ ridge | "
             "ridge, local-only | chance | FedA2V held-out cosine | "
             "ridge (centralized) held-out cosine |",
             "|---|---|---|---|---|---|---|---|---|"]
    for corpus, row in rows.items():
        gap = " / ".join(f"{row[s]['fed'] - row[s]['ridge']:+.3f}" for s in SPACES)
        reached = " / ".join(f"{row[s]['reached']}" for s in SPACES) + f" of {row['seeds']}"
        lines.append(f"| `{corpus}` | {pair(row, 'fed')} | {pair(row, 'ridge')} | {gap} | "
                     f"{reached} | {pair(row, 'local')} | {pair(row, 'chance')} | "
                     f"{pair(row, 'cosine')} | {pair(row, 'ridge_cosine')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpora", nargs="+", help="experiment files in configs/, by stem")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="change one experiment key in every run")
    parser.add_argument("--root", type=Path, default=Path("/tmp/feda2v-corpora"),
                        help="where the corpora, token caches and runs go")
    args = parser.parse_args()
    try:  # `fed-a2v`'s own --set: JSON values, unknown keys named
        changes = apply_overrides({}, args.set)
    except ConfigError as err:
        raise SystemExit(str(err)) from err
    rows = {}
    for corpus in args.corpora:
        summaries = [run_experiment(CONFIGS / f"{corpus}.json", args.root, f"{corpus}-s{seed}",
                                    seed, args.rounds, changes) for seed in range(args.seeds)]
        rows[corpus] = corpus_row(summaries)
    print(f"{args.rounds} rounds, seeds 0-{args.seeds - 1}, means over seeds, CLIP / T5"
          + (f"; changed: {json.dumps(changes)}" if changes else ""))
    print(table(rows))


if __name__ == "__main__":
    main()
