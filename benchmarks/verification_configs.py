"""The batch-size verification configs, each a real simulated federation, as one table.

Runs `fed-a2v simulate` on every config (3 nodes with non-IID classes on the built-in data, as
the configs say) and prints, per config: batch size, rounds x local epochs, the first round whose
held-out CLIP top-1 reaches 0.9, the final top-1 of both adapters and the wall time.

    .venv/bin/python benchmarks/verification_configs.py [--configs configs/test_bs1.json ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from fed_a2v.config.load import load_config

CONFIGS = ["configs/test_bs1.json", "configs/test_bs8.json", "configs/test_bs16.json",
           "configs/quickstart.json"]
THRESHOLD = 0.9


def run(config: str, output_dir: Path) -> Path:
    done = subprocess.run([sys.executable, "-m", "fed_a2v.cli", "simulate", "--config", config,
                           "--output-dir", str(output_dir)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True)
    return Path(done.stdout.strip().splitlines()[-1])


def row(config: str, run_dir: Path) -> str:
    cfg = load_config(config)
    rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    first = next((r["round"] for r in rounds if (r.get("eval_clip_top1") or 0) >= THRESHOLD), "-")
    fed = cfg.federation
    return (f"| `{Path(config).name}` | {cfg.training.batch_size} | {fed.global_rounds} × "
            f"{fed.local_epochs} | {first} | {summary['eval_clip_top1']:.3f} | "
            f"{summary['eval_t5_top1']:.3f} | {summary['wall_seconds']:.0f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    args = parser.parse_args()
    lines = ["| config | batch | rounds × local epochs | first round with clip top-1 ≥ 0.9 "
             "| final `eval_clip_top1` | final `eval_t5_top1` | wall time |",
             "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="feda2v-verify-") as tmp:
        for config in args.configs:
            lines.append(row(config, run(config, Path(tmp))))
            print(lines[-1], file=sys.stderr, flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
