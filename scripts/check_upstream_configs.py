"""Load every upstream `a2v*.json` in a folder as `fed-a2v validate` reads it, without data.

Usage: python scripts/check_upstream_configs.py DIR [--pattern 'a2v*.json'] [--data DATA_DIR]
Prints which files load, the errors of those that do not, and the not-supported keys with the
number of files that name them (most common first). Exit status 1 when a file fails.

With --data, the corpora the files ask for are generated under DATA_DIR (every class their nodes
select, as many clips per class as their node cuts need, in each kind's layout) and every file
then goes through `fed-a2v validate` itself, pointed at that data with --set; the table counts
exit codes and the warning lines each validation printed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path

from fed_a2v.cli import main as fed_a2v
from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.key_paths import pattern_of
from fed_a2v.config.load import resolve
from fed_a2v.config.schema import Config
from fed_a2v.data.builtin.layouts import write_layout

LAYOUT = {"esc50": "esc50-upstream", "vegas": "vegas", "vggsound": "vggsound"}
MIN_CLIPS = 20  # per class: enough for a 0.8 / 0.1 / 0.1 split to leave a clip in each part


def clips_needed(config: Config) -> dict[str, tuple[set[str], int]]:
    """Per corpus kind: the classes the nodes select and the clips per class their cuts need."""
    needs: dict[str, tuple[set[str], int]] = {}
    for node in config.nodes.values():
        kind = node.dataset or config.dataset.name
        classes, clips = needs.get(kind, (set(), MIN_CLIPS))
        if node.samples_per_node and node.node_split_id is not None:
            clips = max(clips, node.samples_per_node * (node.node_split_id + 1))
        if node.num_samples_per_class:
            clips = max(clips, node.num_samples_per_class)
        needs[kind] = (classes | set(node.selected_classes or []), clips)
    return needs


class Lines(logging.Handler):
    """Counts the warning lines a validation logs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines += record.getMessage().splitlines()


def validate_on_data(files: list[Path], data: Path) -> int:
    """Generate what the files ask for under `data`, then `fed-a2v validate` each file."""
    needs: dict[str, tuple[set[str], int]] = {}
    for path in files:
        for kind, (classes, clips) in clips_needed(resolve(path, quiet=True)[0]).items():
            known, most = needs.get(kind, (set(), 0))
            needs[kind] = (known | classes, max(most, clips))
    sets = []
    for seed, (kind, (classes, clips)) in enumerate(sorted(needs.items())):
        root = data / kind
        if not root.exists():  # a seed per kind: corpora of different kinds share no clip
            print(f"generating {kind}: {len(classes)} classes x {clips} clips in {root}")
            write_layout(root, LAYOUT[kind], sorted(classes), clips, seed, clip_seconds=0.25)
        sets += ["--set", f"dataset.paths.{kind}={root.resolve()}"]
    handler = Lines()
    logging.getLogger("fed_a2v").addHandler(handler)
    codes: Counter[int] = Counter()
    unsupported_lines: Counter[int] = Counter()
    other: Counter[str] = Counter()  # other warnings, by their text after the file name
    for path in files:
        handler.lines = []
        code = fed_a2v(["validate", str(path), *sets])
        codes[code] += 1
        named = [line for line in handler.lines if "not supported" in line]
        unsupported_lines[len(named)] += 1
        other.update(line.split(": ", 1)[-1][:90] for line in handler.lines
                     if line not in named)
        if code:
            print(f"FAILED validate {path.name} (exit {code})")
    print(f"validate on generated data: exit codes {dict(sorted(codes.items()))} (code: files); "
          f"not-supported warning lines per file {dict(sorted(unsupported_lines.items()))} "
          "(lines: files)")
    for text, count in other.most_common():
        print(f"  other warning in {count} files: {text}")
    return 0 if set(codes) == {0} else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path)
    parser.add_argument("--pattern", default="a2v*.json")
    parser.add_argument("--data", type=Path, help="generate the corpora here and validate")
    args = parser.parse_args(argv)
    files = sorted(args.dir.glob(args.pattern))
    failed: dict[str, str] = {}
    named: Counter[str] = Counter()
    warned = 0
    for path in files:
        try:
            _, t = resolve(path, quiet=True)
        except ConfigError as err:
            failed[path.name] = str(err)
            continue
        named.update({pattern_of(key) for key, _, _ in t.unsupported})
        warned += bool(t.unsupported)
    print(f"{len(files)} files: {len(files) - len(failed)} ok, {len(failed)} failed; "
          f"{warned} print the not-supported warning line")
    for name, error in failed.items():
        print(f"FAILED {name}: {error}")
    if named:
        print(f"\n{'not-supported key (when it asks for something)':<58} files")
        for key, count in named.most_common():
            print(f"{key:<58} {count:>5}")
    if args.data and not failed:
        return validate_on_data(files, args.data)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
