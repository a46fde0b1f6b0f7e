"""The federation study: how much does federating cost or gain against one node holding every
clip, and how do non-IID shards and FedProx change that?

Every arm is a real federation in this process (`fed_a2v.launch.inprocess`: the ServerApp's code and
the node code), built from one experiment config by changing only the partition, the strategy,
the aggregation mode and the number of nodes. Every arm's nodes together hold the same training
clips and the same held-out clips (checked by digest): the test folds of the whole corpus.

Nodes evaluate on their own held-out clips, so what a run reports depends on which classes its
nodes hold: a standalone node scores only its own classes. The study therefore also scores,
after every round, each model on ALL held-out clips: the global adapters (federated arms; equal
to what the nodes report, whose union is every held-out clip) or each node's own adapters
(local-only: their mean, as the local-only ridge baseline is reported).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context, Message, MessageType
from safetensors.torch import load_file

from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.schema import BUILTIN_DATASETS, Config, NodeConfig
from fed_a2v.config.validate import config_from_dict
from fed_a2v.data.corpora import Clip, Corpus
from fed_a2v.data.node_corpora import corpus_index, open_corpus
from fed_a2v.data.splits import split_for_node
from fed_a2v.encode.encoded_set import EncodedSet
from fed_a2v.encode.node_data import NodeIdentity, node_data
from fed_a2v.encode.target_set import Targets
from fed_a2v.encode.text_targets import targets_for
from fed_a2v.federation.protocol import ARRAYS_INDEX, STANDALONE
from fed_a2v.federation.server import config_for_run
from fed_a2v.federation.transport import unpack
from fed_a2v.launch.inprocess import LoopbackGrid, run_in_process
from fed_a2v.model.adapters import adapter_names, adapters_for_targets, load_adapters_state
from fed_a2v.model.evaluation import evaluate_adapters
from fed_a2v.studies.batch_size import check_same_split, format_cell, mean_std

log = logging.getLogger(__name__)

# A node's keys that choose its clips: the study's arms set them.
SPLIT_KEYS = ("selected_classes", "excluded_classes", "node_split_id", "num_nodes",
              "samples_per_node")
IID_NOTE = ("partition \"nodes\": every (class, fold) group dealt round-robin over the nodes, "
            "so every node holds the same class mix (IID)")


@dataclass(frozen=True)
class FederationArm:
    name: str
    description: str
    partition: str  # dataset.partition: "nodes" (IID), "classes" or "dirichlet"
    dirichlet_alpha: float | None = None
    strategy: str = "FedAvg"
    standalone: bool = False  # feda2v.adapter_aggregation_mode "none"
    centralized: bool = False  # one node holding every training clip


ARMS = {arm.name: arm for arm in (
    FederationArm("centralized", "one node holding every training clip", "nodes",
                  centralized=True),
    FederationArm("fedavg-iid", "FedAvg, IID shards", "nodes"),
    FederationArm("fedavg-classes", "FedAvg, disjoint classes per node", "classes"),
    FederationArm("fedavg-dirichlet-0.1", "FedAvg, Dirichlet α 0.1 shards", "dirichlet", 0.1),
    FederationArm("fedavg-dirichlet-0.5", "FedAvg, Dirichlet α 0.5 shards", "dirichlet", 0.5),
    FederationArm("fedprox-classes", "FedProx, disjoint classes per node", "classes",
                  strategy="FedProx"),
    FederationArm("local-only", "each node alone (no aggregation), disjoint classes per node",
                  "classes", standalone=True),
)}


def arms_named(names: list[str] | None) -> list[FederationArm]:
    """The arms called `names` (all, in the study's order, for None)."""
    if not names:
        return list(ARMS.values())
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        raise ConfigError(f"unknown arm(s) {', '.join(unknown)}; the arms are: "
                          f"{', '.join(ARMS)}")
    return [ARMS[n] for n in names]


@dataclass
class StudySettings:
    rounds: int | None = None  # None: the config's global_rounds
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    proximal_mu: float = 0.01  # FedProx's


def arm_experiment(base: dict[str, Any], arm: FederationArm, seed: int, classes: list[str],
                   settings: StudySettings, work: Path) -> dict[str, Any]:
    """`base` (a resolved config's dict) with only what `arm` changes, named `<arm>-s<seed>`,
    writing its run under `work/runs`. A built-in corpus is generated from the seed: each seed
    its own, under `work/data`."""
    exp = copy.deepcopy(base)
    fed, ds = exp["federation"], exp["dataset"]
    exp["experiment"].update(name=f"{arm.name}-s{seed}", seed=seed,
                             output_dir=str(work / "runs"))
    if settings.rounds is not None:
        fed["global_rounds"] = settings.rounds
    nodes = 1 if arm.centralized else fed["num_clients"]
    fed.update(num_clients=nodes, min_clients=min(fed["min_clients"], nodes),
               strategy=arm.strategy, baselines=True,
               strategy_options={"proximal_mu": settings.proximal_mu}
               if arm.strategy == "FedProx" else {},
               # `HeldOutGrid` scores what evaluate instructions carry (a standalone node's
               # file before the next round rewrites it); in one process a stage costs nothing
               round_protocol="two_stage")
    ds["partition"] = arm.partition
    if arm.dirichlet_alpha is not None:
        ds["dirichlet_alpha"] = arm.dirichlet_alpha
    mode = exp["feda2v"]["adapter_aggregation_mode"]
    exp["feda2v"]["adapter_aggregation_mode"] = ("none" if arm.standalone else
                                                 "weighted_average" if mode == "none" else mode)
    entries = {}
    for i in range(nodes):
        entry = {k: v for k, v in base["nodes"].get(str(i), {}).items() if k not in SPLIT_KEYS}
        if arm.partition == "classes":  # disjoint: class j on node j mod N
            entry["selected_classes"] = classes[i::nodes]
        entries[str(i)] = entry
    exp["nodes"] = entries
    if ds["name"] in BUILTIN_DATASETS:
        ds["path"] = ""
        ds["path"] = str(work / config_from_dict(exp, arm.name).dataset_path())
    return exp


def clips_digest(clips: list[Clip], corpus: Corpus) -> str:
    """A hash of the clips (path under the corpus root, class), whatever their order."""
    def name(clip: Clip) -> Path:
        return (clip.path.relative_to(corpus.root) if clip.path.is_relative_to(corpus.root)
                else clip.path)

    rows = sorted(f"{name(c)}\t{c.label}" for c in clips)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def arm_split(config: Config, corpus: Corpus) -> dict[str, Any]:
    """The digests of the union of the arm's nodes' training and held-out clips (nodes
    `0..num_clients-1`, each as `fed_a2v.federation.node.identify` makes it in a simulation)."""
    n = config.federation.num_clients
    splits = [split_for_node(corpus, config.node(i), i, n, config, where=f"node {i}")
              for i in range(n)]
    train = [c for s in splits for c in s.train]
    test = [c for s in splits for c in s.test]
    overlap = len(train) - len(set(train)) + len(test) - len(set(test))
    if overlap:
        raise ValueError(f"{config.experiment.name}: {overlap} clips held by two nodes")
    return {"train": clips_digest(train, corpus), "test": clips_digest(test, corpus),
            "train_clips": len(train), "test_clips": len(test),
            "node_train_clips": [len(s.train) for s in splits],
            "node_classes": [len(s.classes) for s in splits]}


class HeldOutGrid(LoopbackGrid):
    """A `LoopbackGrid` that, whenever nodes evaluate, also scores on `held_out` (every held-out
    clip) the global adapters the instruction carries (once per round) or, for standalone
    nodes, each node's own adapters. `scores[round]`: one dict per model scored."""

    def __init__(self, num_nodes: int, config: Config, held_out: EncodedSet,
                 targets: Targets) -> None:
        super().__init__(num_nodes)
        self.config, self.held_out, self.targets = config, held_out, targets
        self.scores: dict[int, list[dict[str, float]]] = {}

    def answer(self, message: Message, context: Context) -> Message:
        reply = super().answer(message, context)
        if message.metadata.message_type != MessageType.EVALUATE or reply.has_error():
            return reply
        server_round = int(message.content["config"]["server-round"])
        if STANDALONE in reply.content:
            state = load_file(str(reply.content[STANDALONE]["path"]))
        elif server_round not in self.scores:
            state = {k: torch.from_numpy(v) for k, v in unpack(
                message.content["arrays"],
                message.content.config_records.get(ARRAYS_INDEX)).items()}
        else:
            return reply
        self.scores.setdefault(server_round, []).append(self.score(state))
        return reply

    def score(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        adapters = adapters_for_targets(self.held_out.tokens.arrays[0].shape[-1],
                                        self.targets.tensors, self.config.feda2v)
        load_adapters_state(adapters, state)
        metrics = evaluate_adapters(adapters, self.held_out, self.targets.tensors,
                                    self.config.training.eval_batch_size, torch.device("cpu"))
        return {f"{n}_top1": metrics[f"eval_{n}_top1"] for n in adapters}


def held_out_set(config: Config, targets: Targets) -> EncodedSet:
    """Every held-out clip of the corpus, encoded (one node holding every clip)."""
    data, _ = node_data(config, NodeIdentity(NodeConfig(), 0, 1, "study"), targets)
    return data.first_tokens(1).test if config.feda2v.use_cls_token_only else data.test


def run_arm_seed(experiment: dict[str, Any], path: Path, config: Config,
                 held_out: EncodedSet, targets: Targets) -> dict[str, Any]:
    """One run of `experiment` (`config` resolved from it, written at `path`): per round,
    top-1 on every held-out clip (`all_held_out`) and as the nodes report it (`node_side`,
    metrics.jsonl), the final per-model scores and the baselines."""
    grid = HeldOutGrid(config.federation.num_clients, config, held_out, targets)
    start = time.perf_counter()
    run_dir = run_in_process(experiment, path, grid)
    seconds = time.perf_counter() - start
    names = adapter_names(config.feda2v)
    rounds = sorted(grid.scores)
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    by_round = {r["round"]: r for r in records}
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "seed": config.experiment.seed, "run_dir": run_dir.name, "seconds": seconds,
        "rounds": rounds,
        "all_held_out": {f"{n}_top1": [sum(s[f"{n}_top1"] for s in grid.scores[r])
                                       / len(grid.scores[r]) for r in rounds] for n in names},
        "final_per_model": grid.scores[rounds[-1]],
        "node_side": {f"{n}_top1": [by_round[r][f"eval_{n}_top1"] for r in rounds]
                      for n in names},
        "baselines": summary["baselines"],
    }


def _mean_final(runs: list[dict[str, Any]], read) -> dict[str, float]:
    return mean_std([read(r) for r in runs])


def run_federation_study(config: Config, arms: list[FederationArm], settings: StudySettings,
                         work: Path) -> dict[str, Any]:
    """Every arm with every seed; returns everything measured (see `write_federation_study`)."""
    started = time.perf_counter()
    work = work.resolve()
    base = config.to_dict()
    names = adapter_names(config.feda2v)
    classes = corpus_index(config).classes
    results = {arm.name: {"arm": asdict(arm), "name": arm.name, "runs": [], "split": {}}
               for arm in arms}
    held: dict[int, dict[str, Any]] = {}
    for seed in settings.seeds:
        whole = config_for_run({"config": str(_write(
            work, arm_experiment(base, ARMS["centralized"], seed, classes, settings, work)))},
            work)
        corpus = open_corpus(whole)
        targets = targets_for(whole, corpus_index(whole))
        held_out = held_out_set(whole, targets)
        expected = arm_split(whole, corpus)
        held[str(seed)] = {"held_out_clips": len(held_out), "held_out_digest": held_out.digest(),
                      "split": expected}
        for arm in arms:
            experiment = arm_experiment(base, arm, seed, classes, settings, work)
            path = _write(work, experiment)
            arm_config = config_for_run({"config": str(path)}, work)
            split = arm_split(arm_config, corpus)
            if (split["train"], split["test"]) != (expected["train"], expected["test"]):
                raise ValueError(
                    f"arm {arm.name} (seed {seed}): its nodes hold {split['train_clips']} "
                    f"training / {split['test_clips']} held-out clips, not the corpus's "
                    f"{expected['train_clips']} / {expected['test_clips']}; the study needs a "
                    "corpus split by folds (every node cuts a ratio split on its own)")
            log.info("federation study: %s, seed %d", arm.name, seed)
            run = run_arm_seed(experiment, path, arm_config, held_out, targets)
            run["split"] = split
            results[arm.name]["runs"].append(run)
            results[arm.name]["split"][str(seed)] = {k: split[k] for k in ("train", "test")}
            results[arm.name]["nodes"] = arm_config.federation.num_clients
    arm_results = list(results.values())
    check_same_split(arm_results)
    for result in arm_results:
        runs = result["runs"]
        final = {}
        for n in names:
            final[f"{n}_top1"] = _mean_final(runs, lambda r, n=n: r["all_held_out"][
                f"{n}_top1"][-1])
            final[f"node_side_{n}_top1"] = _mean_final(runs, lambda r, n=n: r["node_side"][
                f"{n}_top1"][-1])
            final[f"local_only_ridge_{n}_top1"] = _mean_final(
                runs, lambda r, n=n: r["baselines"]["local_only_ridge"][f"{n}_top1_mean"])
        result["final"] = final
        result["seconds"] = mean_std([r["seconds"] for r in runs])
    first = arm_results[0]["runs"]
    references = {
        "ridge_centralized": {f"{n}_top1": mean_std(
            [r["baselines"]["ridge_centralized"][f"{n}_top1"] for r in first]) for n in names},
        "chance": {f"{n}_top1": mean_std([r["baselines"]["chance"][f"{n}_top1"]
                                          for r in first]) for n in names},
    }
    return {"config": base["experiment"]["name"], "corpus": base["dataset"]["name"],
            "rounds": base["federation"]["global_rounds"] if settings.rounds is None
            else settings.rounds,
            "local_epochs": base["federation"]["local_epochs"],
            "num_clients": base["federation"]["num_clients"], "seeds": settings.seeds,
            "proximal_mu": settings.proximal_mu, "classes": len(classes),
            "adapters": list(names), "experiment": base, "per_seed": held, "references": references,
            "arms": arm_results, "wall_seconds": time.perf_counter() - started}


def _write(work: Path, experiment: dict[str, Any]) -> Path:
    path = work / "configs" / f"{experiment['experiment']['name']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(experiment, indent=1))
    return path


def study_table(study: dict[str, Any]) -> str:
    names = study["adapters"]
    label = {n: n.upper() for n in names}
    heads = ([f"{label[n]} top-1, all held-out" for n in names]
             + [f"{label[n]} top-1, nodes' own held-out" for n in names]
             + [f"local-only ridge {label[n]}, same partition" for n in names])
    lines = [f"| arm | nodes | {' | '.join(heads)} | seconds per run |",
             "|---" * (len(heads) + 3) + "|"]
    for arm in study["arms"]:
        f = arm["final"]
        cells = ([format_cell(f[f"{n}_top1"]) for n in names]
                 + [format_cell(f[f"node_side_{n}_top1"]) for n in names]
                 + [format_cell(f[f"local_only_ridge_{n}_top1"]) for n in names])
        lines.append(f"| {arm['name']} | {arm['nodes']} | {' | '.join(cells)} | "
                     f"{arm['seconds']['mean']:.0f} |")
    for ref, text in (("ridge_centralized", "*centralized ridge (reference)*"),
                      ("chance", "*chance (reference)*")):
        values = study["references"][ref]
        cells = [format_cell(values[f"{n}_top1"]) for n in names] + [""] * (2 * len(names))
        lines.append(f"| {text} | | {' | '.join(cells)} | |")
    return "\n".join(lines)


def plot_study(study: dict[str, Any], out: Path) -> Path:
    # Deferred: matplotlib is the `plots` extra's (the CLI checks for it before a study).
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = study["adapters"]
    fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 4.5), squeeze=False)
    for ax, n in zip(axes[0], names, strict=True):
        for i, arm in enumerate(study["arms"]):
            rounds = arm["runs"][0]["rounds"]
            curves = torch.tensor([r["all_held_out"][f"{n}_top1"] for r in arm["runs"]])
            mean = curves.mean(0)
            std = curves.std(0) if len(curves) > 1 else torch.zeros_like(mean)
            ax.plot(rounds, mean, label=arm["name"], color=f"C{i}", marker=".")
            ax.fill_between(rounds, mean - std, mean + std, color=f"C{i}", alpha=0.15)
        for ref, style in (("ridge_centralized", "--"), ("chance", ":")):
            ax.axhline(study["references"][ref][f"{n}_top1"]["mean"], color="grey",
                       linestyle=style, label=ref.replace("_", " "))
        ax.set_title(f"{n.upper()}: top-1 on all held-out clips (mean ± std over seeds)")
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    path = out / "study_top1.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_federation_study(study: dict[str, Any], out: Path) -> Path:
    """`study.json`, `study_top1.png` and `study.md` in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(study, indent=1))
    plot = plot_study(study, out)
    seed0 = study["per_seed"][str(study["seeds"][0])]
    split = seed0["split"]
    md = ["# Federation study\n",
          f"Corpus `{study['corpus']}` ({study['classes']} classes), config "
          f"`{study['config']}`: {split['train_clips']} training clips, "
          f"{seed0['held_out_clips']} held-out clips (the test folds of the whole corpus). "
          f"{study['rounds']} rounds × {study['local_epochs']} local epochs, "
          f"{study['num_clients']} nodes (centralized: 1); seeds {study['seeds']} (each seed "
          "its own shards, initialisation and, for a built-in corpus, its own generated "
          f"corpus); FedProx μ {study['proximal_mu']}. Mean ± std over seeds.\n",
          "Every arm's nodes together hold the same training and held-out clips (same digests, "
          "checked). *All held-out*: the final model(s) scored on every held-out clip by the "
          "study — the global adapters, or for local-only the mean over nodes of each node's "
          "own adapters. *Nodes' own held-out*: what the run itself reports (each node on its "
          "own held-out clips, weighted by clips); the two agree wherever one global model is "
          "scored, and differ for local-only, whose nodes see only their own classes. "
          "*Local-only ridge*: the run's baseline (each node's closed-form ridge map on every "
          f"held-out clip, mean over nodes). Partitions: {IID_NOTE}; classes: class j on node "
          "j mod N; Dirichlet: each class dealt in Dirichlet(α) proportions.\n",
          study_table(study), "", f"![top-1 per round]({plot.name})", ""]
    path = out / "study.md"
    path.write_text("\n".join(md) + "\n")
    return path
