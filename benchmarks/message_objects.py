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
brought replies: a pull that met such an object lasts at least 0.8 s.

    python benchmarks/message_objects.py [--rounds 6] [--out-dir benchmarks/out]
        [--cases 0:0,46:7500000]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
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
# (arrays, total bytes): no arrays (the floor), 1 .. 200 arrays at the adapters' size, and the
# adapters' count at 1/160 of their size.
CASES = ((0, 0), (1, ADAPTER_BYTES), (8, ADAPTER_BYTES), (46, ADAPTER_BYTES),
         (200, ADAPTER_BYTES), (46, 46_000))
# Flower's first retry of an object not yet available waits PULL_INITIAL_BACKOFF (1 s) ±20%.
BACKOFF_SECONDS = 0.8


def objects_per_message(arrays: int, total_bytes: int, chunk: int = 5_242_880) -> int:
    """Objects in one instruction: Message, RecordDict, ArrayRecord, and per array the Array
    and its ArrayChunks (FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE: 5 MB)."""
    if arrays == 0:
        return 2
    per_array = max(1, total_bytes // 4 // arrays) * 4
    return 3 + arrays * (1 + -(-per_array // chunk))


def run_case(work: Path, arrays: int, total_bytes: int, rounds: int) -> dict:
    """Rounds of the floor app with `arrays` arrays of `total_bytes` in all per message, one
    train message per node per round; its round walls and the server's stage timings."""
    root = work / f"arrays-{arrays}-{total_bytes}"
    root.mkdir(parents=True, exist_ok=True)
    out, timings = root / "round_ends.json", root / "timings.json"
    with Federation(root) as federation:
        for i in range(NODES):
            node_file = root / f"node-{i}.json"
            node_file.write_text("{}")
            federation.supernode(node_file)
        status = federation.run({"rounds": rounds, "stages": 1, "nodes": NODES, "out": str(out),
                                 "arrays": arrays, "array-bytes": total_bytes,
                                 "timings": str(timings)}, timeout=TIMEOUT, app_dir=FLOOR_APP)
    if status.get("status") != COMPLETED:
        raise RuntimeError(f"{FLOOR_APP.name} with {arrays} arrays ended {status}; logs under "
                           f"{root}")
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


def describe(arrays: int, total_bytes: int) -> str:
    if arrays == 0:
        return "no arrays (empty instruction, metrics-only reply)"
    size = f"{total_bytes / 1e6:.1f} MB" if total_bytes >= 1e6 else f"{total_bytes / 1e3:.0f} KB"
    return f"{arrays} arrays, {size} ({objects_per_message(arrays, total_bytes)} objects)"


def table(results: list[dict]) -> str:
    floor = results[0]["wall"]
    lines = ["arrays  bytes      objects  wall/round  - floor  push  pull/stage  "
             "pulls>=0.8s  slow pull  fast pull/reply"]
    for r in results:
        lines.append(
            f"{r['arrays']:>6}  {r['bytes']:>9,}  {objects_per_message(r['arrays'], r['bytes']):>7}"
            f"  {r['wall']:>9.2f}s  {r['wall'] - floor:>+6.2f}s  {r['push']:>4.2f}s"
            f"  {r['pull_per_stage']:>9.2f}s  {r['backoff_replies']:>4} of {r['replies']:<4}"
            f"  {r['slow_pull'] or 0:>8.2f}s  {r['fast_pull'] or 0:>10.3f}s")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--work-dir", type=Path, help="keep runs and logs here (default: a "
                        "temporary folder, removed)")
    parser.add_argument("--cases", type=lambda text: [tuple(map(int, c.split(":")))
                                                      for c in text.split(",")],
                        default=CASES, help="ARRAYS:BYTES,... (the first one is the floor the "
                        "others are compared with; default: %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="feda2v-objects-") as tmp:
        work = (args.work_dir or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        results = []
        for arrays, total_bytes in args.cases:
            results.append(run_case(work, arrays, total_bytes, args.rounds))
            print(f"{describe(arrays, total_bytes)}: rounds "
                  f"{', '.join(f'{w:.2f}' for w in results[-1]['walls'])} s", flush=True)
    print(table(results) + "\n")
    floor = results[0]["wall"]
    rows = []
    for r in results:
        what = describe(r["arrays"], r["bytes"])
        rows.append(row(f"{what}: wall per round (median of rounds 2-{args.rounds})", r["wall"],
                        "s", f"{r['wall'] - floor:+.2f} s against no arrays" if r["arrays"]
                        else None))
        rows.append(row(f"{what}: the server's push of the round's instructions", r["push"],
                        "s"))
        rows.append(row(f"{what}: the server's pulls that brought replies, per round",
                        r["pull_per_stage"], "s",
                        f"{r['backoff_replies']} of {r['replies']} replies in a pull of "
                        f">= {BACKOFF_SECONDS} s (Flower's 1 s retry)"))
    notes = [f"{NODES} SuperNodes and a SuperLink on loopback, one train message per node per "
             f"round, {args.rounds} rounds per case (round 1, which starts the processes, left "
             "out). Arrays: float32, equal sizes, fresh values each round; each node's reply "
             "carries its own values of the same sizes.",
             "Objects per message: Message, RecordDict, ArrayRecord, and per array an Array and "
             "one ArrayChunk per 5 MB (FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE); each is moved with "
             "its own call, 2 at a time (FLWR_PRIVATE_MAX_CONCURRENT_OBJ_PUSHES / _PULLS, "
             "flwr/supercore/constant.py).",
             "The server pulls a reply as soon as the SuperLink holds the reply's metadata; an "
             "object the node has not finished uploading is retried after 1 s, then 2 s ... "
             "(flwr/supercore/inflatable/inflatable_utils.py pull_objects, "
             "PULL_INITIAL_BACKOFF = 1, PULL_BACKOFF_CAP = 10): such a pull lasts >= 0.8 s."]
    write_fragment("message_objects", "Flower deployment: a round against the arrays a message "
                   "carries", "python benchmarks/message_objects.py", rows, notes, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
