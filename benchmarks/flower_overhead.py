"""Flower overhead: the quickstart's rounds on the simulation engine and on the deployment
engine (a SuperLink and 3 SuperNodes on loopback), and the wall time of `make run` split into
start-up, encoding and rounds.

Both engines run the same experiment (configs/quickstart.json with fewer rounds) on one corpus
and one token cache, encoded before either runs, so no round compared holds encoding. Each node
reports its own compute seconds (`train_seconds`, `eval_seconds`, in `nodes.jsonl`); a stage
ends with its slowest node, so a round's compute is the slowest node's training plus the slowest
node's evaluation, and the rest of the round is the engine's (messages, processes, polls).
The deployment runs twice, with one message stage per round (the default) and with two
(`federation.round_protocol` two_stage, docs/rounds.md). The same rounds of an app that does no
work (benchmarks/flower_floor) give what each engine
costs before FedA2V does anything, and a deployment whose nodes each keep one long-lived ClientApp
runner (benchmarks/flower_floor/runner.py) what is left once no process starts per message.

    python benchmarks/flower_overhead.py [--rounds 4] [--out-dir benchmarks/out]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fragments import OUT_DIR, row, write_fragment

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # drills.Federation: SuperLink + SuperNodes on loopback

from fed_a2v.launch.host import COMPLETED, Process, flower_env  # noqa: E402

from drills import Federation  # noqa: E402

QUICKSTART = ROOT / "configs" / "quickstart.json"
FLOOR_APP = ROOT / "benchmarks" / "flower_floor"  # a ServerApp and ClientApp that do no work
TIMEOUT = 1800.0


def experiment(work: Path, rounds: int) -> dict[str, Any]:
    """The quickstart, `rounds` rounds, on a corpus and token cache under `work`."""
    config = json.loads(QUICKSTART.read_text())
    config["federation"]["global_rounds"] = rounds
    config["experiment"]["cache_dir"] = str(work / "cache")
    config["dataset"]["path"] = str(work / "data")
    return config


def write_experiment(config: dict[str, Any], path: Path, output_dir: Path) -> Path:
    config = {**config, "experiment": {**config["experiment"], "output_dir": str(output_dir)}}
    path.write_text(json.dumps(config, indent=2))
    return path


def simulate(config_path: Path, *extra: str, env: dict[str, str] | None = None
             ) -> tuple[Path, float]:
    """`fed-a2v simulate` from the repository root: the run directory and the process's start
    time."""
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "fed_a2v.cli", "simulate", "--config",
                           str(config_path), *extra], capture_output=True, text=True,
                          timeout=TIMEOUT, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"fed-a2v simulate failed:\n{done.stderr[-4000:]}")
    return Path(done.stdout.strip().splitlines()[-1]), started


def deploy(config: dict[str, Any], work: Path, runner: bool = False,
           protocol: str = "one_stage") -> Path:
    """The experiment on a SuperLink and one SuperNode per `nodes` entry, each node reading
    its own JSON (its entry, its shard, the shared corpus and cache), with
    `federation.round_protocol` `protocol`; returns the run dir. With `runner`, each SuperNode
    runs with `--isolation process` and one long-lived `benchmarks/flower_floor/runner.py` runs
    its ClientApp tasks."""
    config = {**config, "federation": {**config["federation"], "round_protocol": protocol}}
    root = work / f"deployment-{protocol}{'-runner' if runner else ''}"
    root.mkdir(parents=True, exist_ok=True)
    outputs = root / "outputs"
    path = write_experiment(config, root / "experiment.json", outputs)
    entries = list(config["nodes"].values())
    with Federation(root) as federation:
        for i, entry in enumerate(entries):
            node_file = root / f"node-{i}.json"
            node_file.write_text(json.dumps({
                **entry, "node_split_id": i, "num_nodes": len(entries),
                "dataset_path": config["dataset"]["path"],
                "cache_dir": config["experiment"]["cache_dir"]}))
            node = federation.supernode(node_file,
                                        extra=["--isolation", "process"] if runner else ())
            if runner:  # the Federation stops it with the SuperNodes, last started first
                port = node.args[node.args.index("--port") + 1]
                federation.processes.append(Process(
                    [sys.executable, str(FLOOR_APP / "runner.py"), f"127.0.0.1:{port}"],
                    flower_env(root / f"runner-{i}"), root / f"runner-{i}.log"))
        status = federation.run({"config": str(path), "output-dir": str(outputs)},
                                timeout=TIMEOUT)
    if status.get("status") != COMPLETED:
        raise RuntimeError(f"deployment run ended {status}; logs under {root}")
    (run_dir,) = outputs.glob("*/summary.json")
    return run_dir.parent


def floor_round(work: Path, stages: int, rounds: int, nodes: int, simulation: bool) -> float:
    """Median wall seconds of rounds 2.. of the app that does no work (benchmarks/flower_floor)
    with `stages` messages per node per round, on either engine."""
    engine = "simulation" if simulation else "deployment"
    root = work / f"floor-{engine}-{stages}"
    root.mkdir(parents=True, exist_ok=True)
    out = root / "round_ends.json"
    with Federation(root, simulation=simulation) as federation:
        for i in range(0 if simulation else nodes):
            node_file = root / f"node-{i}.json"
            node_file.write_text("{}")
            federation.supernode(node_file)
        status = federation.run({"rounds": rounds, "stages": stages, "nodes": nodes,
                                 "out": str(out)}, timeout=TIMEOUT, app_dir=FLOOR_APP,
                                federation_config={"num-supernodes": nodes} if simulation
                                else None)
    if status.get("status") != COMPLETED:
        raise RuntimeError(f"{engine} run of {FLOOR_APP.name} ended {status}; logs under {root}")
    ends = json.loads(out.read_text())
    return statistics.median(b - a for a, b in list(itertools.pairwise(ends))[1:])


FLOOR_NOTE = ("Flower alone: benchmarks/flower_floor, a ServerApp and a ClientApp that do no "
              "work (the nodes reply at once, importing only Flower), same number of nodes, "
              "rounds and reply polling as FedA2V's server; a deployment SuperNode sleeps 3 s "
              "whenever it polls the SuperLink and finds no message (flwr/supernode/"
              "start_client_internal.py) and its SuperExec starts one flwr-clientapp process "
              "per message.")


TWO_STAGE = "deployment, two stages per round (round_protocol two_stage)"
RUNNER = "deployment, one long-lived ClientApp runner per node"
RUNNER_NOTE = ("One long-lived ClientApp runner per node: the same deployment with each SuperNode "
               "in `--isolation process` and benchmarks/flower_floor/runner.py in place of "
               "Flower's SuperExec, so no process starts per message (built on Flower's internal "
               "Runtime API; a measurement, not how FedA2V deploys).")


def floor_rows(floor: dict[tuple[str, int], float], fed_sim_wall: float,
               rounds: int) -> list[dict]:
    """Rows for the do-nothing app's rounds, each deployment one as a multiple of FedA2V's
    simulated round (the goal is at most 3x)."""
    out = []
    for (engine, stages), wall in floor.items():
        what = "train + evaluate messages" if stages == 2 else "a train message only"
        compared = (f"{wall / fed_sim_wall:.1f}x FedA2V's simulated round"
                    if engine == "deployment" else "")
        out.append(row(f"Flower alone, {engine}: wall per round, {what} (median of rounds "
                       f"2-{rounds})", wall, "s", compared))
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def round_costs(run_dir: Path) -> list[dict[str, float]]:
    """Per round: wall seconds, the slowest node's training and evaluation seconds, and the
    slowest node's set-up (config, targets, data, adapters) of each stage."""
    timings = json.loads((run_dir / "summary.json").read_text())["timings"]
    ends = [timings["rounds_start"], *timings["round_ends"]]
    nodes = read_jsonl(run_dir / "nodes.jsonl")
    out = []
    for r, (start, end) in enumerate(itertools.pairwise(ends), start=1):
        mine = [n for n in nodes if n["round"] == r]

        def slowest(key: str, of: list[dict[str, Any]] = mine) -> float:
            return max((n.get(key, 0.0) for n in of), default=0.0)

        out.append({"round": r, "wall": end - start, "train": slowest("train_seconds"),
                    "eval": slowest("eval_seconds"), "setup": slowest("train_setup_seconds")
                    + slowest("eval_setup_seconds"),
                    "delivery": slowest("train_delivery_seconds")
                    + slowest("eval_delivery_seconds"),
                    "startup": slowest("train_startup_seconds")
                    + slowest("eval_startup_seconds")})
    return out


def engine_rows(name: str, costs: list[dict[str, float]]) -> tuple[list[dict], float]:
    later = costs[1:] or costs  # round 1 starts the nodes' processes / actors
    wall = statistics.median(c["wall"] for c in later)
    compute = statistics.median(c["train"] + c["eval"] for c in later)
    setup = statistics.median(c["setup"] for c in later)
    delivery = statistics.median(c["delivery"] for c in later)
    startup = statistics.median(c["startup"] for c in later)
    rows = [row(f"{name}: wall per round (median of rounds 2-{len(costs)})", wall, "s"),
            row(f"{name}: slowest node's training + evaluation per round", compute, "s"),
            row(f"{name}: slowest nodes' set-up per round (config, targets, cached tokens)",
                setup, "s"),
            row(f"{name}: slowest nodes' wait from the server's instruction to the node's "
                "process (engine polls, scheduling; simulation: to the handler)", delivery, "s"),
            row(f"{name}: slowest nodes' process start to FedA2V's handler (interpreter, "
                "imports; 0 where the process outlives messages)", startup, "s"),
            row(f"{name}: share of a round not in local training or evaluation",
                max(0.0, 1 - compute / wall), "", f"{wall - compute:.1f} s of {wall:.1f} s")]
    return rows, wall


def make_run_split(work: Path) -> tuple[list[dict], list[str]]:
    """`fed-a2v simulate --config configs/quickstart.json` as `make run` starts it (its corpus
    in data/synthetic, generated if missing), with an empty token and target cache
    (FEDA2V_CACHE_DIR) and its run directory under `work`."""
    env = {**os.environ, "FEDA2V_CACHE_DIR": str(work / "empty-cache")}
    run_dir, started = simulate(QUICKSTART, "--output-dir", str(work / "make-run"), env=env)
    ended = time.time()
    summary = json.loads((run_dir / "summary.json").read_text())
    timings = summary["timings"]
    first = [n for n in read_jsonl(run_dir / "nodes.jsonl") if n["round"] == 1]
    encoding = max(n.get("train_setup_seconds", 0.0) for n in first)
    startup = timings["rounds_start"] - started
    rounds = timings["round_ends"][-1] - timings["rounds_start"]
    total = ended - started
    rows = [row("make run: start-up (process start to the first instruction)", startup, "s",
                f"{startup / total:.0%} of {total:.0f} s"),
            row("make run: encoding (slowest node's data set-up in round 1)", encoding, "s",
                f"{encoding / total:.0%}"),
            row(f"make run: rounds ({len(timings['round_ends'])}), encoding excluded",
                rounds - encoding, "s", f"{(rounds - encoding) / total:.0%}"),
            row("make run: after the last round (final package, report, shutdown)",
                total - startup - rounds, "s", f"{(total - startup - rounds) / total:.0%}"),
            row("make run: total", total, "s")]
    notes = [f"make run: {len(first)} nodes encoded {summary['encoded_clips']} clips from an "
             "empty token cache; start-up includes Flower's SuperLink, `flwr run`, the Ray "
             "simulation and the server's targets (built-in text encoders)."]
    return rows, notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--work-dir", type=Path, help="keep runs and logs here (default: a "
                        "temporary folder, removed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="feda2v-overhead-") as tmp:
        work = (args.work_dir or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        config = experiment(work, args.rounds)
        # Warm-up: one simulated round encodes every node's clips into the shared cache.
        warm = {**config, "federation": {**config["federation"], "global_rounds": 1}}
        simulate(write_experiment(warm, work / "warm.json", work / "warm"))
        sim_dir, _ = simulate(write_experiment(config, work / "simulation.json",
                                               work / "simulation"))
        dep_dir = deploy(config, work)
        two_stage_dir = deploy(config, work, protocol="two_stage")
        runner_dir = deploy(config, work, runner=True)
        sim_rows, sim_wall = engine_rows("simulation", round_costs(sim_dir))
        dep_rows, dep_wall = engine_rows("deployment", round_costs(dep_dir))
        two_rows, two_wall = engine_rows(TWO_STAGE, round_costs(two_stage_dir))
        runner_rows, runner_wall = engine_rows(RUNNER, round_costs(runner_dir))
        same = all(read_jsonl(sim_dir / "metrics.jsonl") == read_jsonl(d / "metrics.jsonl")
                   for d in (dep_dir, two_stage_dir, runner_dir))
        nodes = len(config["nodes"])
        floor = {(engine, stages): floor_round(work, stages, args.rounds, nodes,
                                               engine == "simulation")
                 for engine in ("simulation", "deployment") for stages in (2, 1)}
        compute = statistics.median(c["train"] + c["eval"] for c in round_costs(dep_dir)[1:])
        split_rows, split_notes = make_run_split(work)
    command = "python benchmarks/flower_overhead.py"
    notes = [f"configs/quickstart.json with {args.rounds} rounds, 3 nodes, on one corpus and "
             "one token cache encoded before the runs compared (a 1-round warm-up run).",
             "Rounds are one-stage (the default: a node evaluates the adapters it received at "
             "the start of the next round's train message; the last round has its own "
             "evaluate stage) except in the two-stage row (docs/rounds.md).",
             "Round wall time: the server's round ends (summary.json `timings`); node compute: "
             "each node's own `train_seconds` / `eval_seconds` (nodes.jsonl), slowest node per "
             "stage.",
             "All four runs did the same work: metrics.jsonl identical" if same else
             "The runs' metrics.jsonl differ (same seeds; see the runs)"]
    write_fragment("flower_overhead", "Flower overhead: simulation vs deployment", command,
                   [*sim_rows, *dep_rows,
                    row("deployment / simulation, wall per round", dep_wall / sim_wall, "x",
                        "goal: at most 3x"),
                    *two_rows,
                    row("deployment, one stage / two stages, wall per round",
                        dep_wall / two_wall, "x", "goal: at most 0.5x"),
                    row("deployment, one stage: wall per round above Flower's one-stage floor "
                        "and the slowest node's compute", dep_wall - floor["deployment", 1]
                        - compute, "s", f"{dep_wall:.1f} s - floor "
                        f"{floor['deployment', 1]:.1f} s - compute {compute:.1f} s"),
                    *floor_rows(floor, sim_wall, args.rounds), *runner_rows,
                    row(f"{RUNNER} / simulation, wall per round", runner_wall / sim_wall, "x")],
                   [*notes, FLOOR_NOTE, RUNNER_NOTE], args.out_dir)
    write_fragment("make_run_split", "make run: wall time split", command, split_rows,
                   split_notes, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
