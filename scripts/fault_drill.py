"""Run FedA2V's faults on real parts and print a table: fault, expected, observed.

    .venv/bin/python scripts/fault_drill.py [--skip-slow]

Bad audio goes through the real loader, bad configs through `fed-a2v validate`, bad updates
through the server's strategy (`aggregate_train` on Flower Messages), a killed SuperNode
through a real deployment on loopback, a stopped server through `fed-a2v simulate` and
`--resume`. Every expectation is written down before the fault runs; exits 1 if any row's
observation differs from it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from fed_a2v.data.audio import AudioError, load_audio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the shared scenarios
from drills import (  # noqa: E402
    UNUSABLE,
    server_stopped_and_resumed,
    supernode_killed_mid_round,
    updates_aggregated,
    write_audio_cases,
)

Row = tuple[str, str, str]


REASONS = ("non-finite", "silent", "no samples", "cannot decode")


def audio_rows(root: Path) -> list[Row]:
    rows = []
    for name, path in write_audio_cases(root).items():
        expected = f"skipped: {UNUSABLE[name]}" if name in UNUSABLE else "decoded, 1 s at 16 kHz"
        try:
            wave = load_audio(path, 16000, 1.0)
            observed = f"decoded, {wave.shape[0] / 16000:g} s at 16 kHz"
        except AudioError as err:
            observed = "skipped: " + next((r for r in REASONS if r in str(err)), str(err))
        rows.append((f"audio: {name}", expected, observed))
    return rows


def config_rows(root: Path) -> list[Row]:
    from fed_a2v.data.builtin.synthetic import ensure_synthetic_corpus

    data = ensure_synthetic_corpus(root / "corpus", 0, 3, 10, 0.3, 16000)
    cases = {
        "malformed JSON": ('{"training": {"batch_size": 8,}}', "line 1, column"),
        "unknown key": ('{"training": {"batchsize": 8}}', "did you mean 'batch_size'"),
        "wrong type": ('{"training": {"batch_size": "8"}}', "must be an integer"),
        "out of range": ('{"federation": {"join_ratio": 1.5}}', "above the maximum"),
        "class the corpus lacks": (json.dumps({"dataset": {"name": "esc50", "path": str(data)},
                                               "nodes": {"0": {"selected_classes": ["dgo"]}}}),
                                   "did you mean 'dog'"),
        "fold the corpus lacks": (json.dumps({"dataset": {"name": "esc50", "path": str(data)},
                                              "nodes": {"0": {"test_folds": [7]}}}),
                                  "fold 7"),
    }
    rows = []
    for name, (text, needle) in cases.items():
        path = root / f"{name.replace(' ', '-')}.json"
        path.write_text(text)
        done = subprocess.run([sys.executable, "-m", "fed_a2v.cli", "validate", str(path)],
                              capture_output=True, text=True, timeout=120)
        named = needle in done.stderr and str(path) in done.stderr
        observed = (f"exit {done.returncode}, " + ("error names file and problem" if named
                                                   else f"error: {done.stderr.strip()[-80:]}"))
        rows.append((f"config: {name}", "exit 2, error names file and problem", observed))
    return rows


UPDATE_REASONS = ("non-finite", "shape", "dtype", "keys differ", "max_update_norm")


def update_rows() -> list[Row]:
    """Each bad update arrives beside two good ones in a round of the real strategy. Good:
    node 11 all ones (1 example), node 13 all threes (3 examples), so the global adapters must
    come out (1*1 + 3*3) / 4 = 2.5 everywhere, the bad node 12 dropped for the reason given."""
    reference = {"clip.w": np.zeros((2, 3), np.float32), "t5.w": np.zeros(4, np.float32)}
    good = {k: np.ones_like(v) for k, v in reference.items()}
    bad = {  # name: (update of node 12, why it must be dropped)
        "NaN in an update": ({**good, "t5.w": np.array([np.nan, 0, 0, 0], np.float32)},
                             "non-finite"),
        "wrong shape": ({**good, "t5.w": np.zeros(5, np.float32)}, "shape"),
        "wrong dtype": ({**good, "t5.w": np.zeros(4, np.float64)}, "dtype"),
        "missing key": ({"clip.w": good["clip.w"]}, "keys differ"),
        "norm above the bound": ({k: v * 1e4 for k, v in good.items()}, "max_update_norm"),
    }
    rows = []
    for name, (update, why) in bad.items():
        seen = updates_aggregated(reference, [(11, good, 1), (12, update, 50),
                                              (13, {k: 3 * v for k, v in good.items()}, 3)],
                                  max_update_norm=100.0)
        rows.append((f"update: {name}", f"node 12 dropped ({why}); global 2.5 everywhere",
                     f"{_dropped(seen['dropped'])}; {_global(seen['global'])}"))
    poisoned = bad["NaN in an update"][0]
    seen = updates_aggregated(reference, [(12, poisoned, 50)], max_update_norm=100.0)
    rows.append(("update: every update of a round bad",
                 "node 12 dropped (non-finite); global unchanged; round run again",
                 f"{_dropped(seen['dropped'])}; {_global(seen['global'])}"
                 + ("; round run again" if seen["short"] else "")))
    return rows


def _dropped(dropped: list[tuple[int, str]]) -> str:
    if not dropped:
        return "nothing dropped"
    return ", ".join(f"node {node} dropped ("
                     + next((r for r in UPDATE_REASONS if r in why), why) + ")"
                     for node, why in dropped)


def _global(state: dict[str, np.ndarray] | None) -> str:
    if state is None:
        return "global unchanged"
    values = np.unique(np.concatenate([v.ravel() for v in state.values()]))
    return f"global {values[0]:g} everywhere" if len(values) == 1 else f"global {values}"


def node_kill_row(root: Path) -> Row:
    """3 SuperNodes, 4 rounds, every round needing all 3, a 20 s quorum wait: the last node is
    killed while round 2 is under way. The run stops, naming it; once it is started again,
    the resumed run finishes every round with all three."""
    seen = supernode_killed_mid_round(root, rounds=4, nodes=3, resume=True,
                                      run_config={"set": "federation.quorum_timeout=20"})
    details = str(seen["entry"].get("status-details", ""))
    records = seen["rounds"]
    sent_after = [count - seen["checkpointed"] - 1 for count in seen["train_messages"]]
    observed = "; ".join([
        str(seen["entry"].get("status")),
        "names node 2" if "missing: node 2" in details else f"says: {details[-80:]}",
        ("no train message once the quorum was lost" if max(sent_after) <= 0
         else f"{max(sent_after)} train messages after the quorum was lost"),
        f"resumed {seen.get('resumed', {}).get('status')}",
        f"rounds {[r['round'] for r in records]}",
        ("every round 3 of 3" if all(r["train_nodes"] == 3 for r in records)
         else f"rounds averaged {[r['train_nodes'] for r in records]} of 3"),
        f"{seen['summary'].get('num_nodes')} nodes counted"])
    return ("SuperNode killed mid-round, min_clients 3", "; ".join([
        "finished:failed", "names node 2", "no train message once the quorum was lost",
        "resumed finished:completed", "rounds [1, 2, 3, 4]", "every round 3 of 3",
        "3 nodes counted"]), observed)


def restart_row(root: Path) -> Row:
    """SIGTERM once round 2 of 5 is recorded: the run stops after round 2, 3 or 4 (a round
    may end while the signal lands), and `--resume` finishes it, every round once."""
    seen = server_stopped_and_resumed(root, rounds=5)
    done = [r["round"] for r in seen["rounds"]]
    stopped = seen["stopped_after"]
    observed = ("stopped mid-run" if 2 <= stopped < 5 else f"stopped after round {stopped}")
    observed += (f"; resumed exit {seen['resumed'].returncode}; rounds "
                 + ("1-5 once each" if done == [1, 2, 3, 4, 5] else str(done))
                 + f"; {seen['checkpoints']} checkpoints")
    return ("server stopped mid-run, then --resume",
            "stopped mid-run; resumed exit 0; rounds 1-5 once each; 5 checkpoints", observed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-slow", action="store_true",
                        help="leave out the node kill and server restart (about 3 minutes)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="feda2v-drill-") as tmp:
        root = Path(tmp)
        os.environ.setdefault("FEDA2V_CACHE_DIR", str(root / "cache"))
        rows = audio_rows(root / "audio") + config_rows(root / "config") + update_rows()
        if not args.skip_slow:
            rows += [node_kill_row(root / "node-kill"), restart_row(root / "restart")]
    table = [("fault", "expected", "observed", "ok")]
    table += [(f, e, o, "yes" if e == o else "NO") for f, e, o in rows]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    for i, row in enumerate(table):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    failures = sum(r[3] == "NO" for r in table)
    print(f"{len(rows) - failures} of {len(rows)} rows: observed = expected")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
