"""Run upstream FedA2V experiment files as they are, on generated data in their corpus layouts.

Usage: python scripts/run_upstream_examples.py UPSTREAM_CONFIGS_DIR [--out DIR] [--rounds N]
           [--config NAME ...]

UPSTREAM_CONFIGS_DIR holds upstream's `configs/a2v*.json` (the public `lucapalazzo/fedgfe`
repository). For each chosen file the classes its nodes select are generated, per corpus kind
(ESC-50 in upstream's fold layout, VEGAS, VGGSound), with the built-in sound generator; then
`fed-a2v simulate` runs the file unchanged, with `--set` pointing it at that data, at the CPU and
the built-in models (nothing is downloaded, no W&B run is started) and, with --rounds, at another
number of rounds.
Prints a table of what each run reached and writes it to DIR/results.md and DIR/results.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from fed_a2v.config.load import load_config
from fed_a2v.data.builtin.layouts import write_layout

# A federated run, a standalone (`*_sa`) run and a mixed ESC-50 + VEGAS run.
EXAMPLES = ("a2v_vegas_2n_2c_200s_avg.json", "a2v_esc50_3n_1c_generate_sa.json",
            "a2v_mixed_esc50_vegas_2n_alternative.json")
LAYOUT = {"esc50": "esc50-upstream", "vegas": "vegas", "vggsound": "vggsound"}
OFFLINE = ("experiment.device=cpu", "feda2v.audio_model_name=builtin:tiny-ast",
           "feda2v.clip_model_name=builtin:tiny-clip", "feda2v.t5_model_name=builtin:tiny-t5",
           "feda2v.clip_model_subfolder=null", "feda2v.t5_model_subfolder=null",
           # Files asking for node images render with builtin:tiny-flux: small, on the CPU.
           "feda2v.generation_size=32",
           # Nothing goes online: no W&B run (upstream files default to logging one).
           "wandb.disabled=true")


def classes_by_kind(paths: list[Path]) -> dict[str, list[str]]:
    """The classes the files' nodes select, per corpus kind."""
    found: dict[str, set[str]] = {}
    for path in paths:
        config = load_config(path)
        for node in config.nodes.values():
            kind = node.dataset or config.dataset.name
            found.setdefault(kind, set()).update(node.selected_classes or [])
    return {kind: sorted(names) for kind, names in found.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("runs/upstream-examples"))
    parser.add_argument("--rounds", type=int, default=0,
                        help="federated rounds (default: each file's own)")
    parser.add_argument("--clips-per-class", type=int, default=30)
    parser.add_argument("--config", nargs="+", default=list(EXAMPLES))
    args = parser.parse_args(argv)
    paths = [args.configs_dir / name for name in args.config]
    out = args.out.resolve()
    data = out / "data"
    sets = [*([f"federation.global_rounds={args.rounds}"] if args.rounds else []), *OFFLINE]
    for seed, (kind, classes) in enumerate(sorted(classes_by_kind(paths).items())):
        root = data / kind
        if not root.exists():  # a seed per kind: corpora of different kinds share no clip
            write_layout(root, LAYOUT[kind], classes, args.clips_per_class, seed,
                         clip_seconds=2.0)
        sets.append(f"dataset.paths.{kind}={root}")
    sets.append("dataset.clip_seconds=2.0")
    # The files' own images_output_dir is relative to the working directory: keep it in DIR.
    sets.append(f"feda2v.images_output_dir={out / 'images'}")
    results = []
    for path in paths:
        command = [sys.executable, "-m", "fed_a2v.cli", "simulate", "--config", str(path),
                   "--output-dir", str(out / "runs"),
                   *[arg for s in sets for arg in ("--set", s)]]
        started = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.monotonic() - started
        if done.returncode != 0:
            print(done.stderr[-4000:], file=sys.stderr)
            results.append({"config": path.name, "ok": False, "seconds": round(seconds)})
            continue
        run_dir = Path(done.stdout.strip().splitlines()[-1])
        summary = json.loads((run_dir / "summary.json").read_text())
        results.append({"config": path.name, "ok": True, "seconds": round(seconds),
                        "run_dir": str(run_dir), **summary})
    (out / "results.json").write_text(json.dumps({"set": sets, "runs": results}, indent=2))
    table = render(results, sets)
    (out / "results.md").write_text(table)
    print(table)
    return 0 if all(r["ok"] for r in results) else 1


def render(results: list[dict], sets: list[str]) -> str:
    keys = ("eval_clip_top1", "eval_t5_top1", "val_clip_top1", "val_t5_top1")
    lines = ["| config | mode | nodes | rounds | " + " | ".join(keys)
             + " | adapter bytes sent/round | wall s |",
             "|---" * (len(keys) + 6) + "|"]
    for r in results:
        if not r["ok"]:
            lines.append(f"| {r['config']} | FAILED |" + " |" * (len(keys) + 4))
            continue
        values = " | ".join("-" if r.get(k) is None else f"{r[k]:.3f}" for k in keys)
        sent = r.get("adapter_bytes_sent_per_round")
        sent = max(sent) if isinstance(sent, list) and sent else sent
        mode = r.get("adapter_aggregation_mode", "")
        lines.append(f"| {r['config']} | {mode} | {r.get('num_nodes')} | {r.get('rounds')} | "
                     f"{values} | {sent} | {r['seconds']} |")
    return "\n".join(lines) + "\n\nOverrides: " + " ".join(f"--set {s}" for s in sets) + "\n"


if __name__ == "__main__":
    sys.exit(main())
