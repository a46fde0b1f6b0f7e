"""Each node's own records (`nodes.jsonl`): one line per node and round, under the node's name.

A node's name is the same in the logs, `nodes.jsonl`, the report, TensorBoard and W&B, and after
a resume or a restart of the node (fed_a2v.federation.node `identify` gives it; the server makes
it unique in the run). Flower's node id, which a resume or a restart changes, is kept beside it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FLOWER_NODE_ID = "flower_node_id"  # a node's line: the Flower node id it had in that round


def node_order(name: str) -> tuple[Any, ...]:
    """A sort key putting "node 2" before "node 10" (numbers compare as numbers)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", name) if part)


def node_tag(name: str, key: str) -> str:
    """The TensorBoard tag and W&B key of one node's series: "node 0/train_clip_loss"."""
    return f"{name}/{key}"


def node_name_of(record: dict[str, Any]) -> str:
    """The node's name on a `nodes.jsonl` line. Runs recorded before names were given keyed
    their lines by Flower's node id (a number): that becomes "node <id>"."""
    node = record.get("node")
    return node if isinstance(node, str) else f"node {node}"


def node_lines(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each whole line of `nodes.jsonl` with its record; a torn line (a crash while writing)
    or one without a round is left out, and a missing file has none."""
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("round"), int):
            yield line, record


def read_nodes(path: Path) -> list[dict[str, Any]]:
    """The records of `nodes.jsonl` (`node_lines`), one per node and round (a line written
    again, for a round recorded twice, replaces the earlier one), ordered by round, then
    node."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for _, record in node_lines(path):
        record["node"] = node_name_of(record)
        latest[record["node"], record["round"]] = record  # the later line wins
    return sorted(latest.values(), key=lambda r: (r["round"], node_order(r["node"])))


def node_names(records: list[dict[str, Any]]) -> list[str]:
    """The nodes of `records` (from `read_nodes`), each once, in `node_order`."""
    return sorted({r["node"] for r in records}, key=node_order)
