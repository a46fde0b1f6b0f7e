"""Fault scenarios on real parts, shared by the tests and `scripts/fault_drill.py` (test
scaffolding: it lives beside the tests, not in the product package).

Each scenario sets the fault up, lets FedA2V meet it and returns what happened; callers decide
what they expected.
"""

from __future__ import annotations

import json
import pickle
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid

from fed_a2v.encode.text_targets import Targets
from fed_a2v.federation.feda2v_strategy import FedA2VStrategy
from fed_a2v.federation.protocol import EVALUATE_ROUND
from fed_a2v.federation.rounds import ShortRound
from fed_a2v.launch.host import (
    Process,
    flower_env,
    free_port,
    start_superlink,
    start_supernode,
    submit_run,
    wait_for_run,
    write_connection,
)
from fed_a2v.launch.inprocess import LoopbackGrid, run_in_process, server_identity  # noqa: F401 (tests)
from fed_a2v.model.adapters import ADAPTERS_BY_DIFFUSION
from fed_a2v.runs.run_dir import last_round

APP_DIR = Path(__file__).resolve().parent.parent


# What FedA2V must make of each case `write_audio_cases` writes: decoded, or skipped and why.
DECODABLE = ("8-bit 8 kHz", "24-bit 96 kHz", "stereo 44.1 kHz flac", "mp3 named .wav",
             "truncated")
UNUSABLE = {"float with NaN": "non-finite", "digital silence": "silent",
            "no samples": "no samples", "header only": "cannot decode",
            "empty file": "cannot decode", "text named .wav": "cannot decode"}


def write_audio_cases(root: Path, sr: int = 22050) -> dict[str, Path]:
    """One file for each kind of input a real corpus holds, good and broken."""
    root.mkdir(parents=True, exist_ok=True)
    tone = (0.5 * np.sin(np.arange(sr) * 2 * np.pi * 440 / sr)).astype(np.float32)
    written = {
        "8-bit 8 kHz": ("u8.wav", tone[::3], 8000, {"subtype": "PCM_U8"}),
        "24-bit 96 kHz": ("s24.wav", np.repeat(tone, 4), 96000, {"subtype": "PCM_24"}),
        "stereo 44.1 kHz flac": ("stereo.flac", np.stack([tone, 0.5 * tone], 1), 44100, {}),
        "mp3 named .wav": ("mp3.wav", tone, sr, {"format": "MP3"}),
        "float with NaN": ("nan.wav", np.where(np.arange(sr) == 9, np.nan, tone), sr,
                           {"subtype": "FLOAT"}),
        "digital silence": ("silent.wav", np.zeros(sr, np.float32), sr, {}),
        "no samples": ("zero.wav", np.zeros(0, np.float32), sr, {}),
    }
    paths = {}
    for name, (filename, data, rate, kw) in written.items():
        soundfile.write(root / filename, data, rate, **kw)
        paths[name] = root / filename
    full = (root / "s24.wav").read_bytes()
    for name, filename, content in (("truncated", "truncated.wav", full[: len(full) // 3]),
                                    ("header only", "header-only.wav", full[:30]),
                                    ("empty file", "empty.wav", b""),
                                    ("text named .wav", "text.wav", b"this is not audio")):
        (root / filename).write_bytes(content)
        paths[name] = root / filename
    return paths


def experiment_dict(root: Path, name: str, *, seed: int = 1, output_dir: Path | None = None,
                    federation: dict[str, Any] | None = None,
                    dataset: dict[str, Any] | None = None, feda2v: dict[str, Any] | None = None,
                    nodes: dict[str, Any] | None = None) -> dict[str, Any]:
    """A quick experiment on a small built-in corpus under `root`; each section's keys given
    here replace the defaults."""
    return {
        "experiment": {"name": name, "seed": seed,
                       "output_dir": str(output_dir or root / "outputs")},
        "federation": {"global_rounds": 4, "num_clients": 3, "local_epochs": 1,
                       "min_clients": 3, **(federation or {})},
        "training": {"batch_size": 8, "learning_rate": 0.003},
        "dataset": {"name": "synthetic", "path": str(root / "server-data"),
                    "clip_seconds": 0.5, "num_classes": 3, "clips_per_class": 15,
                    "sample_rate": 16000, **(dataset or {})},
        "feda2v": feda2v or {},
        "nodes": nodes or {},
    }


def small_experiment(root: Path, name: str, feda2v: dict[str, Any] | None = None,
                     **federation) -> Path:
    """`experiment_dict`, written to `root/<name>.json`."""
    experiment = experiment_dict(root, name, federation=federation, feda2v=feda2v)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}.json"
    path.write_text(json.dumps(experiment))
    return path


def node_files(root: Path, count: int, entries: Sequence[dict[str, Any]] = ()) -> list[Path]:
    """One JSON per node: its own data copy, cache and disjoint shard; `entries` (an
    experiment's `nodes`) say which classes each node holds."""
    paths = []
    for i in range(count):
        node = {"node_split_id": i, "num_nodes": count,
                "dataset_path": str(root / f"node-{i}" / "data"),
                "cache_dir": str(root / f"node-{i}" / "cache")}
        if entries:
            node.update(entries[i])
        else:
            node["batch_size"] = 4 + i
            if i == 0:
                node["excluded_classes"] = ["siren"]
        path = root / f"node-{i}.json"
        path.write_text(json.dumps(node))
        paths.append(path)
    return paths


def read_rounds(outputs: Path, name: str = "metrics.jsonl") -> list[dict]:
    """The records of the run under `outputs` (per round, or per node with nodes.jsonl)."""
    found = list(outputs.glob(f"*/{name}"))
    return [json.loads(x) for x in found[0].read_text().splitlines()] if found else []


def supernode_id(process: Process) -> int | None:
    """The node id the SuperLink gave a SuperNode (from its log), None before it has one."""
    found = re.findall(r"SuperNode ID: (\d+)", process.log_path.read_text(errors="replace"))
    return int(found[-1]) if found else None


HANG = 900.0  # seconds after which a drill waiting on a state gives up: a hang, not slowness


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s")


class Federation:
    """A SuperLink on loopback and the SuperNodes added to it, each process with its own
    FLWR_HOME and log under `root`; `with` stops them all, last started first."""

    def __init__(self, root: Path, superlink_args: Sequence[str] = (),
                 root_certificates: Path | None = None, simulation: bool = False) -> None:
        self.root = root
        self.port = free_port()
        self.superlink = f"127.0.0.1:{self.port}"
        self.user_env = flower_env(root / "user-flwr")
        write_connection(root / "user-flwr", "fed", self.superlink, root_certificates)
        self.superlink_args = list(superlink_args)
        self.simulation = simulation  # the SuperLink simulates the nodes itself (Ray)
        self.processes: list[Process] = []

    def __enter__(self) -> Federation:
        self.processes.append(start_superlink(flower_env(self.root / "superlink-flwr"),
                                              self.port, self.root / "superlink.log",
                                              simulation=self.simulation,
                                              extra=self.superlink_args, cwd=self.root))
        return self

    def __exit__(self, *_) -> None:
        for process in reversed(self.processes):
            process.stop()

    def supernode(self, node_file: Path, tag: str = "first",
                  extra: Sequence[str] = ()) -> Process:
        """A SuperNode reading `node_file`; its FLWR_HOME and log are named after the file."""
        name = node_file.stem
        process = start_supernode(flower_env(self.root / name / f"flwr-{tag}"), self.superlink,
                                  free_port(), node_file, self.root / f"{name}-{tag}.log", extra)
        self.processes.append(process)
        return process

    def run(self, run_config: dict[str, Any], timeout: float = 2 * HANG,
            during: Callable[[], None] | None = None,
            federation_config: dict[str, Any] | None = None,
            app_dir: Path = APP_DIR) -> dict[str, Any]:
        """`flwr run` the app (FedA2V's unless `app_dir`); `during()` runs while it does.
        Returns the run's `flwr ls` entry."""
        run_id = submit_run(app_dir, "fed", self.user_env, run_config=run_config,
                            federation_config=federation_config)
        if during is not None:
            during()
        return wait_for_run(run_id, "fed", self.user_env, timeout=timeout)


def checkpoints(outputs: Path) -> int:
    """The rounds the run under `outputs` has checkpointed (finished)."""
    return len(list(outputs.glob("*/checkpoints/round-*.safetensors")))


def train_messages(process: Process) -> int:
    """The train instructions a SuperNode received (from its log)."""
    return process.log_path.read_text(errors="replace").count("Receiving: train message")


def supernode_killed_mid_round(root: Path, rounds: int = 4, nodes: int = 3,
                               experiment: Path | None = None,
                               run_config: dict[str, Any] | None = None,
                               resume: bool = False) -> dict:
    """A deployment of `nodes` SuperNodes; the last one is killed as soon as round 1 is
    checkpointed (round 2 is under way) and stays dead while the run goes on. With `resume`,
    once the run has ended, the node is started again and the run resumed (`resume`,
    `run-dir`). `experiment`: an experiment JSON with `nodes` entries (default: a small one made
    here, every round needing all nodes); `run_config`: more run config for both runs. Returns
    the runs' status entries (`entry`, `resumed`), the records (per round, per node), the
    summary, the node's ids before and after, the rounds checkpointed when the first run ended
    and the train instructions each surviving node had received by then."""
    if experiment is None:
        experiment = small_experiment(root, "killed-node", num_clients=nodes,
                                      min_clients=nodes, local_epochs=3)
    entries = list(json.loads(experiment.read_text()).get("nodes", {}).values())
    files = node_files(root, nodes, entries)
    outputs = root / "outputs"
    config = {"config": str(experiment), "rounds": rounds, "output-dir": str(outputs),
              **(run_config or {})}
    seen: dict[str, Any] = {}
    with Federation(root) as federation:
        *survivors, last = [federation.supernode(f) for f in files]

        def kill() -> None:
            wait_until(lambda: checkpoints(outputs) >= 1, HANG, "round 1's checkpoint")
            seen["killed_id"] = supernode_id(last)
            last.stop(timeout=0)

        seen["entry"] = federation.run(config, during=kill)
        seen["checkpointed"] = checkpoints(outputs)
        seen["train_messages"] = [train_messages(p) for p in survivors]
        if resume:
            again = federation.supernode(files[-1], tag="again")
            wait_until(lambda: supernode_id(again) is not None, HANG, "the restarted node")
            seen["restarted_id"] = supernode_id(again)
            (run_dir,) = [p.parent for p in outputs.glob("*/config.json")]
            seen["resumed"] = federation.run({**config, "resume": True,
                                              "run-dir": str(run_dir)})
    summary = list(outputs.glob("*/summary.json"))
    return {"rounds": read_rounds(outputs), "nodes": read_rounds(outputs, "nodes.jsonl"),
            "summary": json.loads(summary[0].read_text()) if summary else {}, **seen}


def server_stopped_and_resumed(root: Path, rounds: int = 5) -> dict:
    """`fed-a2v simulate` is stopped (SIGTERM) after round 2, then run with `--resume`. The
    adapters' LR follows a cosine schedule, so each round has its own."""
    cosine = {f"{name}_adapter_learning_rate_schedule": "cosine"
              for name in ADAPTERS_BY_DIFFUSION["flux"]}
    experiment = small_experiment(root, "resume", feda2v=cosine, global_rounds=rounds,
                                  num_clients=2, min_clients=2, local_epochs=15)
    outputs = root / "outputs"
    command = [sys.executable, "-m", "fed_a2v.cli", "simulate", "--config", str(experiment)]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        wait_until(lambda: len(read_rounds(outputs)) >= 2 or first.poll() is not None, HANG,
                   "round 2")
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
    (run_dir,) = outputs.glob("resume-*")
    stopped_after = last_round(run_dir)  # one-stage: a held round's checkpoint counts
    stopped_with_summary = (run_dir / "summary.json").exists()
    config_before = (run_dir / "config.json").read_bytes()
    resumed = subprocess.run([sys.executable, "-m", "fed_a2v.cli", "simulate", "--resume",
                              str(run_dir)], capture_output=True, text=True, timeout=HANG)
    return {"run_dir": run_dir, "stopped_after": stopped_after,
            "stopped_with_summary": stopped_with_summary, "resumed": resumed,
            "config_kept": (run_dir / "config.json").read_bytes() == config_before,
            "rounds": read_rounds(outputs),
            "checkpoints": len(list((run_dir / "checkpoints").glob("round-*.safetensors")))}


# One node's train message in a fresh interpreter, as `flwr-clientapp` runs it on a deployed
# node: the ClientApp's module is imported (what every message's process pays), then the
# handler. argv: the pickled (message, context) (`pickled_train_messages`), then module names.
# Prints one JSON line: the reply's metrics, seconds to import and to handle, the process's CPU
# seconds and peak memory, and which of the named modules it imported. Run it from APP_DIR.
FRESH_NODE = """
import json, pickle, resource, sys, time
started = time.perf_counter()
from flwr.supercore.task_identity import TaskIdentity
import client.app
from fed_a2v.federation.node import train_reply
imported = time.perf_counter()
msg, context = pickle.loads(open(sys.argv[1], "rb").read())
TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, context.node_id
metrics = dict(train_reply(msg, context).content["metrics"])
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"metrics": metrics, "imports": imported - started,
                  "handler": time.perf_counter() - imported,
                  "cpu": usage.ru_utime + usage.ru_stime, "peak_mib": usage.ru_maxrss / 1024,
                  "imported": sorted(m for m in sys.argv[2:] if m in sys.modules)}))
"""


def fresh_node_command(message: Path, modules: Sequence[str] = ()) -> list[str]:
    """The command that runs FRESH_NODE on a pickled message, reporting `modules`."""
    return [sys.executable, "-c", FRESH_NODE, str(message), *modules]


def pickled_train_messages(grid: LoopbackGrid, folder: Path, server_round: int
                           ) -> dict[int, Path]:
    """Each node's train message of `server_round` on `grid`, pickled with the node's context
    under `folder`: node id -> file."""
    paths = {}
    for msg in grid.sent:
        if (msg.metadata.message_type == MessageType.TRAIN
                and int(msg.content["config"]["server-round"]) == server_round):
            node = msg.metadata.dst_node_id
            paths[node] = folder / f"train-{server_round}-{node}.pkl"
            paths[node].write_bytes(pickle.dumps((msg, grid.contexts[node])))
    return paths


def evaluated_rounds(sent: Sequence[Message]) -> list[int]:
    """The rounds whose global adapters the nodes were sent to evaluate: in an evaluate stage,
    or (one-stage rounds) in the next round's train instructions."""
    return sorted({int(m.content["config"]["server-round"]) for m in sent
                   if m.metadata.message_type == MessageType.EVALUATE}
                  | {int(m.content["config"][EVALUATE_ROUND]) for m in sent
                     if EVALUATE_ROUND in m.content["config"]})


def train_reply(node: int, state: dict[str, np.ndarray], examples: int) -> Message:
    """Node `node`'s answer to a train instruction, built as a ClientApp builds it (a reply to
    the instruction, so Flower sets its source node). Needs `server_identity()`."""
    instruction = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}),
                          dst_node_id=node, message_type=MessageType.TRAIN)
    return Message(RecordDict({
        "arrays": ArrayRecord({k: Array(v) for k, v in state.items()}),
        "metrics": MetricRecord({"num-examples": examples}),
    }), reply_to=instruction)


def updates_aggregated(global_state: dict[str, np.ndarray],
                       updates: Sequence[tuple[int, dict[str, np.ndarray], int]],
                       max_update_norm: float | None) -> dict[str, Any]:
    """The server's strategy aggregates one round of train replies, `(node, adapters,
    examples)` each, against `global_state`. Returns the new global adapters (None: the round
    left them as they were), the updates it dropped, as `(node, why)`, and, for a round short
    of its quorum (`ShortRound`: it is run again), why."""
    dims = {"clip": torch.zeros(1, 2), "t5": torch.zeros(1, 1, 2)}  # targets: unused here
    strategy = FedA2VStrategy(Targets(["a"], ["a"], dims), lambda _: {"clip": 0.0, "t5": 0.0},
                              max_update_norm=max_update_norm)
    strategy.global_state = global_state  # what configure_train keeps of the round's adapters
    short = None
    with server_identity():
        try:
            arrays, _ = strategy.aggregate_train(1, [train_reply(*u) for u in updates])
        except ShortRound as err:
            arrays, short = None, str(err)
    return {"global": None if arrays is None else {k: v.numpy() for k, v in arrays.items()},
            "dropped": [(node, why) for _, node, why, _ in strategy.rejected], "short": short}


class NodesGrid(Grid):
    """A Grid of connected nodes and nothing else: enough for `configure_train`; a subclass
    that answers messages overrides `push_messages` / `pull_messages`."""

    def __init__(self, nodes: Sequence[int]) -> None:
        self.nodes = list(nodes)

    def set_run(self, run) -> None: ...

    @property
    def run(self):
        return None

    def create_message(self, *args, **kwargs) -> Message:
        raise NotImplementedError

    def get_node_ids(self) -> list[int]:
        return self.nodes

    def get_nodes(self):
        return []

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        raise NotImplementedError
