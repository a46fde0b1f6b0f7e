"""Merge the benchmark fragments (`benchmarks/out/*.json`) into `benchmarks/results.json` and
`benchmarks/RESULTS.md`, in the order of SECTIONS; `make bench` runs it last.

    .venv/bin/python benchmarks/collect.py [--out-dir benchmarks/out] [--results-dir benchmarks]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fragments import OUT_DIR, machine, markdown_table, row

HERE = Path(__file__).resolve().parent
MEASURED_GPU = HERE / "measured" / "gpu.json"
# fragment name -> why it is in the table (the rows, in its order)
SECTIONS = {
    "upstream_design": "FedA2V's adapters against the upstream research code's",
    "real_sizes": "The real models' shapes on this machine",
    "encode_cache": "Token cache, built-in AST",
    "encode_cache_full_ast": "Token cache, full-size AST",
    "server_memory": "Server memory, batch against streaming aggregation",
    "server_memory_kd": "Server memory with KD aggregation",
    "transport": "Compact transport",
    "flower_overhead": "Flower's share of a round, simulation against deployment",
    "message_objects": "Flower's cost per array a message carries (why the adapters travel packed)",
    "node_process": "A deployed node's process per message (why it has its own AdamW)",
    "make_run_split": "Where `make run` spends its time",
    "gpu": "On a GPU",
}


def gpu_fragment() -> dict:
    """The GPU section when this run had no GPU: the last one measured on a GPU machine
    (`measured/gpu.json`, which says where and when), else an empty row, never an estimate."""
    if MEASURED_GPU.exists():
        fragment = json.loads(MEASURED_GPU.read_text())
        fragment["notes"] = [f"Not from this run: measured {fragment['measured']}."] + \
            fragment["notes"]
        return fragment
    return {"section": "On a GPU", "command": "make bench (on a machine with a GPU)",
            "rows": [row("real-width training and encoding on a GPU", None)],
            "notes": ["No GPU was lent to the session that ran this; the row stays empty "
                      "rather than estimated."]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--results-dir", type=Path, default=HERE)
    parser.add_argument("--generated", help="when the fragments were measured, if not now "
                                            "(re-collecting an earlier run's fragments)")
    args = parser.parse_args()
    fragments = {p.stem: json.loads(p.read_text()) for p in sorted(args.out_dir.glob("*.json"))}
    fragments.setdefault("gpu", gpu_fragment())
    missing = [name for name in SECTIONS if name not in fragments]
    if missing:
        raise SystemExit(f"no fragment for {missing} in {args.out_dir}: run `make bench`")
    ordered = {name: fragments[name] for name in SECTIONS}
    generated = args.generated or time.strftime("%Y-%m-%d %H:%M:%S %Z")
    results = {"generated": generated, "machine": machine(), "sections": ordered}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Benchmark results", "",
             f"Written by `make bench` on {results['generated']} "
             f"({machine()['cpu_threads']} CPU threads, {machine()['platform']}, torch "
             f"{machine()['torch']}, GPU: {machine()['gpu'] or 'none'}). Every figure comes "
             "from the command named under its section, all in one run on one machine, except "
             "a section whose notes say otherwise; `results.json` holds the same numbers.", ""]
    for name, fragment in ordered.items():
        lines += [f"## {SECTIONS[name]}", "", f"`{fragment['command']}`", "",
                  markdown_table(fragment["rows"]), ""]
        lines += [f"- {note}" for note in fragment.get("notes", [])]
        lines.append("")
    (args.results_dir / "RESULTS.md").write_text("\n".join(lines))
    print(f"wrote {args.results_dir / 'results.json'} and {args.results_dir / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
