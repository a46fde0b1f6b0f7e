"""What a deployed node pays per message for its fresh process: on the deployment engine every
message runs in a new `flwr-clientapp` process, so what that process imports and builds is paid
again by every node in every round. This records the quickstart's round-2 train messages (run
in process on a loopback grid, which also fills the token cache), then replays each in a fresh
Python that imports what `flwr-clientapp` loads (`client.app`) and handles it: one node at a
time, and the three at once as in a round. It also times what `torch.optim` costs in such a
process: its optimizers import `torch._dynamo` the first time they add a parameter group or
step, which is why a node trains with `fed_a2v.model.optim.AdamW` (docs/performance.md).

    python benchmarks/node_process.py [--repeats 3] [--out-dir benchmarks/out] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from fragments import OUT_DIR, row, write_fragment

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # drills: the fresh node process, as the tests run it

from drills import (  # noqa: E402
    APP_DIR,
    LoopbackGrid,
    fresh_node_command,
    pickled_train_messages,
    run_in_process,
)

QUICKSTART = ROOT / "configs" / "quickstart.json"
NODES = 3
HEAVY = ("torch._dynamo", "transformers", "diffusers")

# torch.optim's first use in a fresh interpreter that has imported torch: seconds and memory.
TORCH_OPTIM = """
import json, time
import torch

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

before, started = rss_mib(), time.perf_counter()
torch.optim.AdamW([torch.nn.Parameter(torch.zeros(4))], lr=1e-3)
print(json.dumps({"seconds": time.perf_counter() - started, "mib": rss_mib() - before}))
"""


def record_messages(work: Path) -> list[Path]:
    """The quickstart for 2 rounds on a loopback grid; each node's round-2 train message and
    context, pickled."""
    config = json.loads(QUICKSTART.read_text())
    config["federation"]["global_rounds"] = 2
    config["experiment"].update(output_dir=str(work / "runs"), cache_dir=str(work / "cache"))
    config["dataset"]["path"] = str(work / "data")
    grid = LoopbackGrid(NODES)
    run_in_process(config, work / "quickstart.json", grid)
    return list(pickled_train_messages(grid, work, server_round=2).values())


def start(command: list[str]) -> tuple[subprocess.Popen, IO[str]]:
    # stderr to a file: a process waiting on a full pipe would not run while the others do
    err = tempfile.TemporaryFile("w+")
    return subprocess.Popen(command, cwd=APP_DIR, text=True, stdout=subprocess.PIPE,
                            stderr=err), err


def finish(started: tuple[subprocess.Popen, IO[str]]) -> dict:
    process, err = started
    out, _ = process.communicate(timeout=600)
    with err:
        if process.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"a replayed message failed (exit {process.returncode}):\n"
                               f"{err.read()[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def replay(messages: list[Path], together: bool) -> tuple[float, list[dict]]:
    """Wall seconds until every message's process has exited, and each one's report."""
    started = time.perf_counter()
    if together:
        reports = [finish(p) for p in [start(fresh_node_command(m, HEAVY)) for m in messages]]
    else:
        reports = [finish(start(fresh_node_command(m, HEAVY))) for m in messages]
    return time.perf_counter() - started, reports


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--work-dir", type=Path, help="keep the messages and runs here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        messages = record_messages(work)
        alone, together = [], []
        for _ in range(args.repeats):
            alone += replay(messages, together=False)[1]
            together.append(replay(messages, together=True))
        optim = [finish(start([sys.executable, "-c", TORCH_OPTIM]))
                 for _ in range(args.repeats)]

    def median(key: str, reports: list[dict]) -> float:
        return statistics.median(r[key] for r in reports)

    def training(reports: list[dict]) -> float:
        return statistics.median(r["metrics"]["train_seconds"] for r in reports)

    crowded = [r for _, reports in together for r in reports]
    heavy = sorted({m for r in alone + crowded for m in r["imported"]})
    rows = [
        row("one node's message alone: the fresh process's imports (client.app)",
            median("imports", alone), "s"),
        row("one node's message alone: handler (config, targets, cached tokens, evaluation, "
            "local training)", median("handler", alone), "s",
            f"training {training(alone):.2f} s"),
        row("one node's message alone: CPU of the process", median("cpu", alone), "s"),
        row("one node's message alone: peak memory of the process", median("peak_mib", alone),
            "MiB"),
        row(f"{NODES} nodes' messages at once: until the last process exits",
            statistics.median(wall for wall, _ in together), "s",
            f"training {training(crowded):.2f} s per node"),
        row("torch.optim's first optimizer in a fresh process that has imported torch "
            "(imports torch._dynamo)", median("seconds", optim), "s",
            f"+{median('mib', optim):.0f} MiB; FedA2V's nodes do not pay it"),
        row("heavy modules a node's process imported", ", ".join(heavy) or "none"),
    ]
    notes = [f"configs/quickstart.json, round 2's train message of each of its {NODES} nodes "
             f"(tokens cached), each replayed {args.repeats} times alone and {args.repeats} "
             "times all at once; medians. The process imports what flwr-clientapp loads for "
             "FedA2V (client.app) but not flwr-clientapp's own start-up and message transfer, "
             "which benchmarks/flower_overhead.py measures."]
    write_fragment("node_process", "A deployed node's fresh process per message",
                   "python benchmarks/node_process.py", rows, notes, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
