"""What a deployment round costs per array a message carries: the app that does no work
(benchmarks/flower_floor) on a SuperLink and 3 SuperNodes on loopback, a train message per
round whose instruction and reply each carry an ArrayRecord of N float32 arrays, for several N
at one total size (FedA2V's adapters: 46 arrays, 7.5 MB) and for 46 arrays at a small total, so
that what grows with the number of arrays is told apart from what grows with the bytes.

Flower 1.42 sends a message as a tree of objects (Message, RecordDict, ArrayRecord, one Array
per array, one ArrayChunk per 5 MB of an array) and moves each object with its own Runtime or
Fleet API call (`flwr.supercore.inflatable.inflatable_utils.push_objects` / `pull_objects`, 2
at a time). A receiver that asks for an object its sender has not finished uploading is told it
is not yet available and tries again after 1 s, then 2, 4 ... (`pull_objects`, ±20% jitter).
Besides each round's wall time, the server here times its push and each of its pulls that
brought replies (a pull that met such an object lasts at least 0.8 s, but so does a slow
transfer of many objects). With --trace, Flower's processes log at DEBUG, which stamps their
lines: each reply's way is split into legs from the SuperNodes' logs, and the retried object
pulls are counted in the SuperLink's and SuperNodes' logs.

    python benchmarks/message_objects.py [--rounds 4] [--out-dir benchmarks/out]
        [--cases 0:0,46:7500000] [--trace] [--work-dir DIR [--reuse]]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from fragments import OUT_DIR, row, write_fragment

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # drills.Federation: SuperLink + SuperNodes on loopback

from fed_a2v.launch.host import COMPLETED  # noqa: E402

from drills import Federation  # noqa: E402

FLOOR_APP = ROOT / "benchmarks" / "flower_floor"  # a ServerApp and ClientApp that do no work
TIMEOUT = 900.0
NODES = 3
ADAPTER_BYTES = 7_500_000  # FedA2V's adapters as one message carries them
# (arrays, total bytes): no arrays (the floor), 1 .. 120 arrays at the adapters' size, and the
# adapters' count at about 1/160 of their size.
CASES = ((0, 0), (1, ADAPTER_BYTES), (8, ADAPTER_BYTES), (46, ADAPTER_BYTES),
         (120, ADAPTER_BYTES), (46, 46_000))
# Flower's first retry of an object not yet available waits PULL_INITIAL_BACKOFF (1 s) ±20%.
BACKOFF_SECONDS = 0.8


def objects_per_message(arrays: int, total_bytes: int, chunk: int = 5_242_880) -> int:
    """Objects in one instruction: Message, RecordDict, ArrayRecord, and per array the Array
    and its ArrayChunks (FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE: 5 MB)."""
    if arrays == 0:
        return 2
    per_array = max(1, total_bytes // 4 // arrays) * 4
    return 3 + arrays * (1 + -(-per_array // chunk))


def run_case(work: Path, arrays: int, total_bytes: int, rounds: int,
             reuse: bool = False) -> dict:
    """Rounds of the floor app with `arrays` arrays of `total_bytes` in all per message, one
    train message per node per round; its round walls and the server's stage timings. With
    `reuse`, a case whose run is already under `work` is read, not run again."""
    root = work / f"arrays-{arrays}-{total_bytes}"
    root.mkdir(parents=True, exist_ok=True)
    out, timings = root / "round_ends.json", root / "timings.json"
    if not (reuse and out.exists() and timings.exists()):
        with Federation(root) as federation:
            for i in range(NODES):
                node_file = root / f"node-{i}.json"
                node_file.write_text("{}")
                federation.supernode(node_file)
            status = federation.run({"rounds": rounds, "stages": 1, "nodes": NODES,
                                     "out": str(out), "arrays": arrays,
                                     "array-bytes": total_bytes, "timings": str(timings)},
                                    timeout=TIMEOUT, app_dir=FLOOR_APP)
        if status.get("status") != COMPLETED:
            raise RuntimeError(f"{FLOOR_APP.name} with {arrays} arrays ended {status}; logs "
                               f"under {root}")
    ends = json.loads(out.read_text())
    walls = [b - a for a, b in itertools.pairwise(ends)]
    stages = [s for r in json.loads(timings.read_text())[1:] for s in r]  # rounds 2..
    pulls = [p for s in stages for p in s["pulls"]]
    slow = [p for p in pulls if p["seconds"] >= BACKOFF_SECONDS]
    fast = [p for p in pulls if p["seconds"] < BACKOFF_SECONDS]
    return {"arrays": arrays, "bytes": total_bytes, "walls": walls, "root": root,
            "wall": statistics.median(walls[1:]),
            "push": statistics.median(s["push"] for s in stages),
            "pull_per_stage": statistics.median(sum(p["seconds"] for p in s["pulls"])
                                                for s in stages),
            "replies": sum(len(p["nodes"]) for p in pulls), "backoff_pulls": len(slow),
            "backoff_replies": sum(len(p["nodes"]) for p in slow),
            "slow_pull": statistics.median(p["seconds"] for p in slow) if slow else None,
            "fast_pull": statistics.median(p["seconds"] / len(p["nodes"]) for p in fast)
            if fast else None}

LOG_LINE = re.compile(r"^(?:DEBUG|INFO|WARNING|ERROR)\s+(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}):"
                      r"\s+(.*?)\s*$")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# A SuperNode's log lines (FLWR_LOG_LEVEL=DEBUG stamps them) that mark a message's way through
# it, once per message, in this order: its Fleet pull of the instruction and its objects, the
# ClientApp process (started by the SuperExec), the ClientApp's reply handed to the SuperNode
# (its Runtime API's PushMessages), and the SuperNode's Fleet push of the reply and its objects.
NODE_MARKS = {"Receiving: train message": "receiving", "Received successfully": "received",
              "Start `flwr-clientapp` process": "clientapp",
              "Runtime.PushMessages": "reply", "Sending: train message": "sending",
              "Sent successfully": "sent"}
# The legs of one reply's way, each from one mark to the next (server: the server's push of the
# instructions; pulled: the end of the server's pull that brought the reply).
LEGS = (("pushed", "receiving", "the node's poll finds the instruction (every 3 s while idle)"),
        ("receiving", "received", "the SuperNode pulls the instruction's objects"),
        ("received", "clientapp", "a ClientApp process starts (to its first log line)"),
        ("clientapp", "reply", "the ClientApp pulls the objects from its SuperNode, replies"),
        ("reply", "sending", "the SuperNode picks the reply up"),
        ("sending", "sent", "the SuperNode pushes the reply and its objects"),
        ("sent", "pulled", "the server's pull ends after the node's push"))


def node_marks(log: Path) -> tuple[int, list[dict[str, float]]]:
    """A SuperNode's id and, per message in order, the Unix time of each of its marks and how
    many objects its ClientApp pulled from it (`clientapp_pulls`)."""
    node_id, messages = 0, []
    for line in ANSI.sub("", log.read_text(errors="replace")).splitlines():
        if found := re.search(r"SuperNode ID: (\d+)", line):
            node_id = int(found.group(1))
        if not (m := LOG_LINE.match(line)):
            continue
        if messages and m.group(2).startswith("Runtime.PullObject"):  # the ClientApp's
            messages[-1]["clientapp_pulls"] = messages[-1].get("clientapp_pulls", 0) + 1
        mark = next((v for k, v in NODE_MARKS.items() if m.group(2).startswith(k)), None)
        if mark is None:
            continue
        at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if mark == "receiving" or not messages:
            messages.append({})
        messages[-1].setdefault(mark, at)
    return node_id, messages


def trace_legs(root: Path) -> dict[str, float]:
    """Median seconds of each leg over rounds 2.. and nodes, from the SuperNodes' DEBUG logs
    and the server's timings (one train stage per round)."""
    rounds = json.loads((root / "timings.json").read_text())
    legs: dict[str, list[float]] = {a + "-" + b: [] for a, b, _ in LEGS}
    for log in sorted(root.glob("node-*-first.log")):
        node_id, messages = node_marks(log)
        for stages, marks in list(zip(rounds, messages, strict=False))[1:]:
            stage = stages[0]
            marks = {**marks, "pushed": stage["pushed_at"] + stage["push"]}
            marks["pulled"] = next((p["start"] + p["seconds"] for p in stage["pulls"]
                                    if node_id in p["nodes"]), float("nan"))
            for a, b, _ in LEGS:
                legs[a + "-" + b].append(marks.get(b, float("nan")) - marks.get(a, float("nan")))
    return {k: statistics.median(v) for k, v in legs.items() if v}


def pull_retries(root: Path, arrays: int, total_bytes: int) -> dict[str, float]:
    """Median, over rounds 2.., of the object pulls per round beyond one per object, from the
    DEBUG logs: each is a retry of an object that was not yet available, after a 1 s, 2 s ...
    back-off. `server`: the ServerApp's pulls of the replies (the SuperLink's
    Runtime.PullObject), `nodes`: the SuperNodes' pulls of the instructions (its
    Fleet.PullObject), `clientapps`: the ClientApps' pulls from their SuperNodes."""
    counts: list[dict[str, int]] = []
    for line in ANSI.sub("", (root / "superlink.log").read_text(errors="replace")).splitlines():
        if not (m := LOG_LINE.match(line)):
            continue
        if m.group(2).startswith("Runtime.PushMessages"):  # the server sends a round's stage
            counts.append({"server": 0, "nodes": 0})
        elif counts and m.group(2).startswith("Runtime.PullObject"):
            counts[-1]["server"] += 1
        elif counts and m.group(2).startswith("[Fleet.PullObject]"):
            counts[-1]["nodes"] += 1
    # Objects per reply: the instruction's, less its content's, plus a MetricRecord.
    expected = {"server": NODES * (objects_per_message(arrays, total_bytes) + 1),
                "nodes": NODES * objects_per_message(arrays, total_bytes)}
    out = {k: statistics.median(c[k] - expected[k] for c in counts[1:]) for k in expected}
    per_round = [0] * len(counts)
    for log in root.glob("node-*-first.log"):
        for r, marks in enumerate(node_marks(log)[1][: len(counts)]):
            per_round[r] += marks.get("clientapp_pulls", 0)
    out["clientapps"] = statistics.median(n - expected["nodes"] for n in per_round[1:])
    return out


def describe(arrays: int, total_bytes: int) -> str:
    if arrays == 0:
        return "no arrays (empty instruction, metrics-only reply)"
    size = f"{total_bytes / 1e6:.1f} MB" if total_bytes >= 1e6 else f"{total_bytes / 1e3:.0f} KB"
    noun = "array" if arrays == 1 else "arrays"
    return f"{arrays} {noun}, {size} ({objects_per_message(arrays, total_bytes)} objects)"


def seconds(value: float | None, width: int) -> str:
    """`value` right-aligned, or '-' where there is none (None, NaN)."""
    if value is None or value != value:
        return "-".rjust(width)
    return f"{value:>{width}.2f}"


def table(results: list[dict]) -> str:
    floor = results[0]["wall"]
    head = ("arrays      bytes  objects  wall/round  - floor   push  pull/round  "
            "replies in a pull >= 0.8 s")  # a retry's back-off, or a slow transfer
    lines = [head]
    for r in results:
        lines.append(
            f"{r['arrays']:>6}  {r['bytes']:>9,}  {objects_per_message(r['arrays'], r['bytes']):>7}"
            f"  {r['wall']:>9.2f}s  {r['wall'] - floor:>+6.2f}s  {r['push']:>5.2f}s"
            f"  {r['pull_per_stage']:>9.2f}s  {r['backoff_replies']} of {r['replies']}")
    if all("legs" in r for r in results):
        lines += ["", "Median seconds of each leg of a reply's way (rounds 2.., every node):"]
        lines.append("arrays      bytes  " + "  ".join(f"{b[:8]:>8}" for _, b, _ in LEGS)
                     + "  retries: server  nodes  clientapps")
        for r in results:
            lines.append(f"{r['arrays']:>6}  {r['bytes']:>9,}  " + "  ".join(
                seconds(r["legs"].get(f"{a}-{b}"), 8) for a, b, _ in LEGS)
                + f"  {r['retries']['server']:>15g}  {r['retries']['nodes']:>5g}"
                f"  {r['retries']['clientapps']:>10g}")
        lines += [f"  {b}: {what}" for _, b, what in LEGS]
        lines.append("  retries: object pulls per round beyond one per object (each after a "
                     "1 s, 2 s ... back-off): the server's of the replies, the SuperNodes' and "
                     "the ClientApps' of the instructions")
    return "\n".join(lines)


def summary_rows(results: list[dict]) -> list[dict]:
    """What a round's wall follows: the slope per object at the adapters' size, the bytes at
    the adapters' count, and one array in place of the adapters' 46."""
    by_case = {(r["arrays"], r["bytes"]): r["wall"] for r in results}
    full = [(objects_per_message(a, b), wall) for (a, b), wall in by_case.items()
            if b == ADAPTER_BYTES]
    rows = []
    if len(full) >= 2:
        slope = statistics.linear_regression(*zip(*full, strict=True)).slope
        rows.append(row(f"per object in each message, {ADAPTER_BYTES / 1e6:.1f} MB in all: "
                        "wall per round (least squares over "
                        f"{', '.join(str(n) for n, _ in full)} objects)", 1000 * slope, "ms"))
    if (46, ADAPTER_BYTES) in by_case and (46, 46_000) in by_case:
        rows.append(row("46 arrays: 7.5 MB against 46 KB, wall per round",
                        by_case[46, ADAPTER_BYTES] - by_case[46, 46_000], "s"))
    if (46, ADAPTER_BYTES) in by_case and (1, ADAPTER_BYTES) in by_case:
        rows.append(row("7.5 MB in 1 array in place of 46: wall per round saved",
                        by_case[46, ADAPTER_BYTES] - by_case[1, ADAPTER_BYTES], "s"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--work-dir", type=Path, help="keep runs and logs here (default: a "
                        "temporary folder, removed)")
    parser.add_argument("--cases", type=lambda text: [tuple(map(int, c.split(":")))
                                                      for c in text.split(",")],
                        default=CASES, help="ARRAYS:BYTES,... (the first one is the floor the "
                        "others are compared with; default: %(default)s)")
    parser.add_argument("--trace", action="store_true", help="run Flower's processes with "
                        "FLWR_LOG_LEVEL=DEBUG, which stamps their log lines, and split each "
                        "reply's way into legs (DEBUG logging slows the processes: the legs "
                        "show where a round's time goes, the walls of a run without it what "
                        "it costs)")
    parser.add_argument("--reuse", action="store_true", help="with --work-dir: read the cases "
                        "already run there instead of running them again")
    args = parser.parse_args()
    if args.trace:
        os.environ["FLWR_LOG_LEVEL"] = "DEBUG"  # Federation's processes inherit it
    with tempfile.TemporaryDirectory(prefix="feda2v-objects-") as tmp:
        work = (args.work_dir or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        results = []
        for arrays, total_bytes in args.cases:
            result = run_case(work, arrays, total_bytes, args.rounds, args.reuse)
            if args.trace:
                result["legs"] = trace_legs(result["root"])
                result["retries"] = pull_retries(result["root"], arrays, total_bytes)
            results.append(result)
            print(f"{describe(arrays, total_bytes)}: rounds "
                  f"{', '.join(f'{w:.2f}' for w in result['walls'])} s", flush=True)
    print(table(results) + "\n")
    floor = results[0]
    rows = []
    for r in results:
        what = describe(r["arrays"], r["bytes"])
        rows.append(row(f"{what}: wall per round (median of rounds 2-{args.rounds})", r["wall"],
                        "s", f"{r['wall'] - floor['wall']:+.2f} s against no arrays"
                        if r is not floor else None))
        rows.append(row(f"{what}: the server's pulls that brought replies, per round",
                        r["pull_per_stage"], "s",
                        f"{r['backoff_replies']} of {r['replies']} replies in a pull of "
                        f">= {BACKOFF_SECONDS} s"))
        if "retries" in r:
            rows.append(row(f"{what}: object pulls retried per round (after a back-off), the "
                            "server's / the SuperNodes' / the ClientApps'",
                            " / ".join(f"{r['retries'][k]:g}"
                                       for k in ("server", "nodes", "clientapps"))))
        for a, b, leg in LEGS[1:]:
            if f"{a}-{b}" in r.get("legs", {}):
                rows.append(row(f"{what}: {leg} (median)", r["legs"][f"{a}-{b}"], "s"))
    rows += summary_rows(results)
    notes = [f"{NODES} SuperNodes and a SuperLink on loopback, one train message per node per "
             f"round, {args.rounds} rounds per case (round 1, which starts the processes, left "
             "out). Arrays: float32, equal sizes, fresh values each round; each node's reply "
             "carries its own values of the same sizes.",
             "Objects per message: Message, RecordDict, ArrayRecord, and per array an Array and "
             "one ArrayChunk per 5 MB (FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE); each is moved with "
             "its own HTTP call, 2 at a time (FLWR_PRIVATE_MAX_CONCURRENT_OBJ_PUSHES / _PULLS, "
             "flwr/supercore/constant.py), on each of a reply's five hops: server to SuperLink, "
             "SuperLink to SuperNode, SuperNode to ClientApp and back, SuperNode to SuperLink, "
             "SuperLink to server.",
             "The server pulls a reply as soon as the SuperLink holds the reply's metadata; an "
             "object the node has not finished uploading is retried after 1 s, then 2 s ... "
             "(flwr/supercore/inflatable/inflatable_utils.py pull_objects, "
             "PULL_INITIAL_BACKOFF = 1, PULL_BACKOFF_CAP = 10): a pull that met one lasts "
             ">= 0.8 s, but so does a slow transfer of many objects; --trace counts the "
             "retries themselves (the SuperLink's DEBUG log)."]
    if args.trace:
        notes.append("Legs: from the SuperNodes' own log lines (FLWR_LOG_LEVEL=DEBUG stamps them; "
                     "the runs above ran with it, which slows them) and the server's timings of "
                     "its push and pulls.")
    trace = " --trace" if args.trace else ""
    write_fragment("message_objects" + trace.replace(" --", "_"), "Flower deployment: a round "
                   "against the arrays a message carries" + (", legs (FLWR_LOG_LEVEL=DEBUG)"
                                                             if trace else ""),
                   "python benchmarks/message_objects.py" + trace, rows, notes, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
