"""Load every upstream `a2v*.json` in a folder as `fed-a2v validate` reads it, without data.

Usage: python scripts/check_upstream_configs.py DIR [--pattern 'a2v*.json']
Prints which files load, the errors of those that do not, and the not-supported keys with the
number of files that name them (most common first). Exit status 1 when a file fails.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from fed_a2v.config import ConfigError
from fed_a2v.upstream import pattern_of, resolve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path)
    parser.add_argument("--pattern", default="a2v*.json")
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
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
