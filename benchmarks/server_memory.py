"""The server's peak memory while one train round's N updates of the real-width adapters come in.

Two servers (three with --kd), each in a fresh process per N:
  batch      - Flower's own FedAvg: the grid's send_and_receive collects every reply, then
               `aggregate_train` averages them (what a plain Flower server does);
  streaming  - FedA2V's strategy on its RoundGrid: each reply is screened and added to a
               float64 running sum as it arrives, then dropped;
  kd         - the streaming server with KD aggregation (`adapter_aggregation_mode` kd): each
               reply's adapters also run on its classes' transfer samples (10 classes, 4 samples
               each, 1214 tokens, generators held by the server) and add to the teacher's
               per-class sums before they are dropped; then one distillation epoch.
Each reply reaches the server as it would from a SuperLink: rebuilt by Flower's own
`inflate_object_from_contents` from the deflated objects of a node's real-width update
(CLIP 768, T5 17 x 4096: 48.7 MiB fp32). Peak = the process's high-water RSS during the round
(reset through /proc/self/clear_refs once the server holds its global adapters and the
instructions), minus its RSS at that point.

    .venv/bin/python benchmarks/server_memory.py [--nodes 3 10 30 100] [--out-dir DIR]
    .venv/bin/python benchmarks/server_memory.py --kd --nodes 3 30
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
from fragments import ESC50_CLASSES, OUT_DIR, row, write_fragment
from tqdm import tqdm

MIB = 2**20
KD_CLASSES = 10


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def one(mode: str, nodes: int, transport: str) -> dict[str, float]:
    """Run one round of `nodes` updates, sent in `transport`, in this process; bytes of one
    model and of the peak."""
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
    from flwr.serverapp.strategy import FedAvg
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    from fed_a2v.config.feda2v_section import FedA2VConfig
    from fed_a2v.config.schema import Config
    from fed_a2v.encode.text_targets import Targets
    from fed_a2v.federation.distillation import KDAggregation
    from fed_a2v.federation.feda2v_strategy import FedA2VStrategy
    from fed_a2v.federation.protocol import CLASS_COUNTS
    from fed_a2v.federation.rounds import RoundGrid, RoundTimeout
    from fed_a2v.federation.transport import encode_update
    from fed_a2v.model.adapters import adapters_for_targets, adapters_state
    from fed_a2v.model.generators import ClassGenerator

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from drills import server_identity

    torch.manual_seed(0)
    rows = KD_CLASSES if mode == "kd" else ESC50_CLASSES
    table = {"clip": torch.randn(rows, 768), "t5": torch.randn(rows, 17, 4096)}
    template = adapters_for_targets(768, table, FedA2VConfig())
    state = {k: v.numpy() for k, v in adapters_state(template).items()}
    model_bytes = sum(v.nbytes for v in state.values())
    rng = np.random.default_rng(0)
    moved = {k: v + rng.standard_normal(v.shape, np.float32) * 1e-3 for k, v in state.items()}

    class ArrivingGrid(Grid):
        """Answers each instruction with a node's update, inflated from its wire objects
        only when the server pulls it, as the SuperLink hands replies over."""

        def __init__(self) -> None:
            arrays, meta = encode_update(moved, state, transport)
            # KD: each node holds 2 of the classes, 10 clips each
            counts = {CLASS_COUNTS: ConfigRecord({"counts": json.dumps(
                {f"class {c}": 10 for c in range(2)})})} if mode == "kd" else {}
            with server_identity():
                template = Message(RecordDict({
                    "arrays": arrays, "transport": meta, **counts,
                    "metrics": MetricRecord({"num-examples": 10})}),
                    reply_to=Message(RecordDict(), dst_node_id=1,
                                     message_type=MessageType.TRAIN))
            self.root = template.object_id
            self.wire = {oid: obj.deflate()
                         for oid, obj in get_all_nested_objects(template).items()}
            self.pending: dict[str, int] = {}

        def set_run(self, run) -> None: ...

        @property
        def run(self):
            return None

        def create_message(self, *args, **kwargs):
            raise NotImplementedError

        def get_node_ids(self) -> list[int]:
            return list(range(1, nodes + 1))

        def get_nodes(self):
            return []

        def push_messages(self, messages) -> list[str]:
            ids = []
            for message in messages:
                mid = uuid.uuid4().hex
                self.pending[mid] = message.metadata.dst_node_id
                ids.append(mid)
            return ids

        def pull_messages(self, message_ids) -> list[Message]:
            out = []
            for mid in message_ids:
                if mid not in self.pending:
                    continue
                node = self.pending.pop(mid)
                contents = {oid: bytes(bytearray(b)) for oid, b in self.wire.items()}
                reply = inflate_object_from_contents(self.root, contents)
                reply.metadata.__dict__.update(_reply_to_message_id=mid, _src_node_id=node,
                                               _message_id=uuid.uuid4().hex)
                out.append(reply)
            return out

        def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
            ids = self.push_messages(messages)  # Flower's grids: push all, then pull all
            return self.pull_messages(ids)

    grid = ArrivingGrid()
    arrays = ArrayRecord({k: Array(v) for k, v in state.items()})
    with server_identity():
        if mode == "batch":
            strategy = FedAvg(min_available_nodes=1)
            instructions = list(strategy.configure_train(1, arrays, ConfigRecord(), grid))
            round_grid = grid
        else:
            names = [f"class {c}" for c in range(rows)]
            targets = Targets(names, names, table)
            kd = None
            if mode == "kd":
                config = Config()
                config.feda2v.adapter_aggregation_mode = "kd"
                config.feda2v.kd_samples_per_class = 4
                config.feda2v.kd_training_epochs = 1
                kd = KDAggregation(config, targets, 768)
                kd.generators = {c: ClassGenerator(torch.randn(1, 1214, 768), torch.zeros(0, 1),
                                                   torch.zeros(0), 1.0, 10) for c in names}
            strategy = FedA2VStrategy(targets, lambda _: {"clip": 1e-3, "t5": 1e-3},
                                      min_train_nodes=1, min_available_nodes=1,
                                      transport_dtype=transport,
                                      aggregation_mode="kd" if kd else "weighted_average",
                                      kd=kd)
            round_grid = RoundGrid(grid, RoundTimeout(60.0), on_train_reply=strategy.take_update)
            instructions = list(strategy.configure_train(1, arrays, ConfigRecord(), round_grid))
        Path("/proc/self/clear_refs").write_text("5")  # the high-water mark starts again here
        baseline = rss_kib("VmRSS")
        replies = round_grid.send_and_receive(instructions)
        result, _ = strategy.aggregate_train(1, replies)
        peak = rss_kib("VmHWM")
    assert result is not None and len(list(replies)) == nodes and not strategy_rejected(strategy)
    if mode == "kd":
        taught = strategy.round_metrics[1]["kd_classes"]
        assert taught == 2, f"KD taught {taught} classes, expected 2"
    return {"model_bytes": model_bytes, "peak_bytes": (peak - baseline) * 1024}


def strategy_rejected(strategy) -> list:
    return getattr(strategy, "rejected", [])


SERVERS = (("batch", "fp32"), ("streaming", "fp32"), ("streaming", "fp16"), ("streaming", "int8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[3, 10, 30, 100])
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--kd", action="store_true",
                        help="the streaming server with and without KD aggregation")
    parser.add_argument("--one", nargs=3, metavar=("MODE", "N", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.one[2])))
        return
    if args.kd:
        kd_memory(args.nodes, args.out_dir)
        return
    results: dict[tuple[str, str, int], dict[str, float]] = {}
    for nodes in tqdm(args.nodes, desc="server memory"):
        for mode, dtype in SERVERS:
            out = subprocess.run([sys.executable, __file__, "--one", mode, str(nodes), dtype],
                                 check=True, capture_output=True, text=True).stdout
            results[mode, dtype, nodes] = json.loads(out.strip().splitlines()[-1])
    model = next(iter(results.values()))["model_bytes"]
    rows = [row("one model (real-width adapters, fp32)", round(model / MIB, 1), "MiB")]
    names = {"batch": "batch (Flower FedAvg)", "streaming": "streaming"}
    for nodes in args.nodes:
        batch = results["batch", "fp32", nodes]["peak_bytes"]
        for mode, dtype in SERVERS:
            peak = results[mode, dtype, nodes]["peak_bytes"]
            rows.append(row(f"server peak, N = {nodes}: {names[mode]}, {dtype} updates",
                            round(peak / MIB), "MiB",
                            f"{peak / model:.2f}x one model"
                            + ("" if mode == "batch" else f"; batch {batch / model:.1f}x")))
    write_fragment("server_memory", "Server memory while aggregating one round",
                   "python benchmarks/server_memory.py", rows,
                   ["Peak RSS above the server's own once it holds the round's global "
                    "adapters and instructions; each reply inflated by Flower from its wire "
                    "objects when pulled; each (mode, N) in a fresh process.",
                    "Streaming holds a float64 running sum (2x one model) and one reply in "
                    "flight; Flower's inflation of a pulled reply keeps its chunks and its "
                    "arrays until it returns (2x that reply: 1x one model for fp16, 0.5x "
                    "for int8)."],
                   args.out_dir)


def kd_memory(counts: list[int], out_dir: Path) -> None:
    """The streaming server's peak with and without KD aggregation, per N."""
    rows = []
    for nodes in tqdm(counts, desc="KD server memory"):
        peaks = {}
        for mode in ("streaming", "kd"):
            out = subprocess.run([sys.executable, __file__, "--one", mode, str(nodes), "fp32"],
                                 check=True, capture_output=True, text=True).stdout
            peaks[mode] = json.loads(out.strip().splitlines()[-1])["peak_bytes"]
        rows.append(row(f"server peak, N = {nodes}: streaming FedAvg, then KD",
                        round(peaks["kd"] / MIB), "MiB",
                        f"streaming alone {round(peaks['streaming'] / MIB)} MiB"))
    write_fragment("server_memory_kd", "Server memory with KD aggregation",
                   "python benchmarks/server_memory.py --kd --nodes " + " ".join(
                       map(str, counts)), rows,
                   [f"One round of real-width adapters ({KD_CLASSES} classes), each node holding 2 "
                    "of them; 4 transfer samples of 1214 tokens per class; one distillation "
                    "epoch. The teacher's sums are per class, not per node."], out_dir)


if __name__ == "__main__":
    main()
