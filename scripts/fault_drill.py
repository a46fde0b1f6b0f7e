"""Run FedA2V's faults on real parts and print a table: fault, expected, observed.

    .venv/bin/python scripts/fault_drill.py [--skip-slow]

Bad audio goes through the real loader, bad configs through `fed-a2v validate`, bad updates
through the server's screening and FedAvg, a killed SuperNode through a real deployment on
loopback, a stopped server through `fed-a2v simulate` and `--resume`. Exits 1 if any row's
observation differs from its expectation.
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

from fed_a2v.aggregation import fedavg_per_adapter, update_problem
from fed_a2v.audio import AudioError, load_audio
from fed_a2v.drills import (
    server_stopped_and_resumed,
    supernode_killed_mid_round,
    write_audio_cases,
)

Row = tuple[str, str, str]


REASONS = ("non-finite", "silent", "no samples", "cannot decode")


def audio_rows(root: Path) -> list[Row]:
    unusable = {"float with NaN": "non-finite", "digital silence": "silent",
                "no samples": "no samples", "header only": "cannot decode",
                "empty file": "cannot decode", "text named .wav": "cannot decode"}
    rows = []
    for name, path in write_audio_cases(root).items():
        expected = f"skipped: {unusable[name]}" if name in unusable else "decoded, 1 s at 16 kHz"
        try:
            wave = load_audio(path, 16000, 1.0)
            observed = f"decoded, {wave.shape[0] / 16000:g} s at 16 kHz"
        except AudioError as err:
            observed = "skipped: " + next((r for r in REASONS if r in str(err)), str(err))
        rows.append((f"audio: {name}", expected, observed))
    return rows


def config_rows(root: Path) -> list[Row]:
    from fed_a2v.synthetic import ensure_synthetic_corpus

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


def update_rows() -> list[Row]:
    reference = {"clip.w": np.zeros((2, 3), np.float32), "t5.w": np.zeros(4, np.float32)}
    good = {"clip.w": np.ones((2, 3), np.float32), "t5.w": np.ones(4, np.float32)}
    bad = {
        "NaN in an update": {**good, "t5.w": np.array([np.nan, 0, 0, 0], np.float32)},
        "wrong shape": {**good, "t5.w": np.zeros(5, np.float32)},
        "missing key": {"clip.w": good["clip.w"]},
        "norm above the bound": {k: v * 1e4 for k, v in good.items()},
    }
    rows = []
    for name, update in bad.items():
        kept = [u for u in (good, update) if update_problem(u, reference, 100.0) is None]
        averaged = fedavg_per_adapter(kept, [1.0] * len(kept))
        finite = all(np.isfinite(v).all() for v in averaged.values())
        observed = f"{'dropped' if len(kept) == 1 else 'accepted'}; global finite: {finite}"
        rows.append((f"update: {name}", "dropped; global finite: True", observed))
    return rows


def node_kill_row(root: Path) -> Row:
    seen = supernode_killed_mid_round(root)
    nodes = [r["train_nodes"] for r in seen["rounds"]]
    observed = (f"{seen['entry'].get('status')}; round 2 averaged {nodes[1]} of 3; "
                f"restarted node took part: {seen['summary'].get('num_nodes') == 4}; "
                f"last round {nodes[-1]} of 3")
    return ("SuperNode killed in round 2, restarted",
            "finished:completed; round 2 averaged 2 of 3; restarted node took part: True; "
            "last round 3 of 3", observed)


def restart_row(root: Path) -> Row:
    seen = server_stopped_and_resumed(root)
    rounds = [r["round"] for r in seen["rounds"]]
    observed = (f"stopped after {seen['stopped_after']}, resumed exit "
                f"{seen['resumed'].returncode}, rounds {rounds}, {seen['checkpoints']} checkpoints")
    ok = 2 <= seen["stopped_after"] < 5
    expected = (f"stopped after {seen['stopped_after'] if ok else '2-4'}, resumed exit 0, "
                f"rounds {list(range(1, 6))}, 5 checkpoints")
    return ("server stopped mid-run, then --resume", expected, observed)


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
