"""What the server's strategy keeps of a run besides the adapters: each round's metrics and each
node's, clip counts over the run, nodes seen, failed and refused, files skipped, images rendered,
bytes sent and received; `progress` and `restore`, what a resumed run goes on from."""

from __future__ import annotations

import json
from typing import Any

from flwr.app import Message, MetricRecord

from fed_a2v.encode.node_data import COUNT_KEYS
from fed_a2v.federation.baselines import RidgeBaselines
from fed_a2v.federation.overlap_check import OverlapCheck
from fed_a2v.federation.protocol import IMAGES, SKIPPED, STANDALONE
from fed_a2v.federation.replies import NodeNames, reply_metrics
from fed_a2v.runs.node_records import FLOWER_NODE_ID


class RunRecords:
    """The run's records, kept by `FedA2VStrategy`: a mixin before its Flower strategy, which
    sets `standalone`, `overlap`, `baselines` and `awaiting_eval`, and the round's state,
    itself."""

    standalone: bool
    overlap: OverlapCheck | None
    baselines: RidgeBaselines | None
    awaiting_eval: int | None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # the Flower strategy's
        self.rejected: list[tuple[int, int, str, str]] = []  # (round, Flower id, why, name)
        self.round_metrics: dict[int, dict[str, float]] = {}
        self.totals = dict.fromkeys(COUNT_KEYS, 0)
        self.nodes_seen: set[str] = set()  # node keys (stable over restarts) that took part
        # (round, stage, Flower node id, why, node name)
        self.failed: list[tuple[int, str, int, str, str]] = []
        self.skipped_files: set[str] = set()  # "path: why", as the nodes reported them
        # round -> node name -> its own metrics, and "flower_node_id" (see `_note_node`)
        self.node_metrics: dict[int, dict[str, dict[str, float]]] = {}
        self.names = NodeNames()  # each node's name in this run's records; kept over resumes
        self.has_targets: set[int] = set()  # nodes that answered a message since their delivery
        self.node_images: list[dict[str, Any]] = []  # {"round", "node", "count", "dir"}
        self.adapter_bytes: dict[int, int] = {}  # round -> adapter bytes sent to all its nodes
        self.update_bytes: dict[int, int] = {}  # round -> adapter bytes its train replies held
        self.node_adapters: dict[str, dict[str, Any]] = {}  # standalone: node key -> its file
        # The differential-privacy wrapper's state (fed_a2v.federation.privacy), for a resumed run
        self.privacy: dict[str, Any] = {}

    def _note_replies(self, server_round: int, replies: list[Message]) -> None:
        if self.overlap:
            self.overlap.note(replies)
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                self.has_targets.discard(node)  # it may have lost them: send again
                self.failed.append((server_round, msg.metadata.message_type, node,
                                    msg.error.reason, self.node_name(msg)))
            else:
                self.has_targets.add(node)
                name = self.node_name(msg)
                if SKIPPED in msg.content:
                    self.skipped_files.update(json.loads(str(msg.content[SKIPPED]["files"])))
                if IMAGES in msg.content:  # rendered with the adapters of its "round"
                    images = msg.content[IMAGES]
                    self.node_images.append({"round": int(images.get("round", server_round)),
                                             "node": name,
                                             "count": int(images["count"]),
                                             "dir": str(images["dir"])})
                if self.standalone and STANDALONE in msg.content:
                    own = msg.content[STANDALONE]
                    self.node_adapters[name] = {"path": str(own["path"]),
                                                "rounds": int(own["rounds"])}

    def progress(self) -> dict[str, Any]:
        """What the summary adds up over the whole run, for a resumed run to go on from; one
        stage: the round whose line waits for its evaluation (`held`), with what it has."""
        held = self.awaiting_eval
        return {**({"held": {"round": held, "metrics": self.round_metrics.get(held, {}),
                             "nodes": self.node_metrics.get(held, {})}}
                   if held is not None else {}),
                "totals": self.totals, "nodes": sorted(self.nodes_seen),
                "node_names": self.names.by_key,
                "skipped_files": sorted(self.skipped_files), "rejected": self.rejected,
                "failed": self.failed, "adapter_bytes": self.adapter_bytes,
                "update_bytes": self.update_bytes,
                "node_adapters": self.node_adapters, "node_images": self.node_images,
                **({"privacy": self.privacy} if self.privacy else {}),
                **({"baselines": self.baselines.progress()} if self.baselines else {})}

    def restore(self, progress: dict[str, Any]) -> None:
        """Go on from `progress()` as saved by the stopped part of a resumed run."""
        self.totals.update(progress.get("totals", {}))
        self.nodes_seen.update(progress.get("nodes", []))
        self.names.restore(progress.get("node_names", {}))
        self.skipped_files.update(progress.get("skipped_files", []))
        # Runs recorded before nodes had names kept no name: theirs is "node <Flower id>".
        self.rejected.extend((*x[:3], x[3] if len(x) > 3 else f"node {x[1]}")
                             for x in progress.get("rejected", []))
        self.failed.extend((*x[:4], x[4] if len(x) > 4 else f"node {x[2]}")
                           for x in progress.get("failed", []))
        self.adapter_bytes.update({int(r): int(b)
                                   for r, b in progress.get("adapter_bytes", {}).items()})
        self.update_bytes.update({int(r): int(b)
                                  for r, b in progress.get("update_bytes", {}).items()})
        self.node_adapters.update(progress.get("node_adapters", {}))
        self.node_images.extend(progress.get("node_images", []))
        self.privacy = progress.get("privacy", {})
        if "held" in progress:  # the first train instruction evaluates the checkpoint's adapters
            held = progress["held"]
            self.awaiting_eval = int(held["round"])
            self.round_metrics[self.awaiting_eval] = dict(held["metrics"])
            self.node_metrics[self.awaiting_eval] = dict(held["nodes"])
        if self.baselines:
            self.baselines.restore(progress.get("baselines", {}))

    def adapter_bytes_per_round(self, rounds: int) -> list[int]:
        """Adapter bytes the server sent in each of rounds 1..`rounds` (all of the round's train
        and evaluate messages together)."""
        return [self.adapter_bytes.get(r, 0) for r in range(1, rounds + 1)]

    def update_bytes_per_round(self, rounds: int) -> list[int]:
        """Adapter bytes the train replies of each of rounds 1..`rounds` held, all nodes."""
        return [self.update_bytes.get(r, 0) for r in range(1, rounds + 1)]

    def _note_node(self, server_round: int, msg: Message,
                   metrics: MetricRecord | None = None) -> None:
        """Keep one node's own train or eval metrics (`metrics`, else its reply's) for the
        round (per-node curves), under its name, with the Flower node id it had when it first
        reported in the round (`flower_node_id`; a one-stage round's evaluation may come from
        the node restarted under a new id)."""
        metrics = metrics if metrics is not None else reply_metrics(msg.content)
        own = {k: float(v) for k, v in metrics.items()
               if k.startswith(("train_", "eval_", "val_", "generator_"))
               and isinstance(v, (int, float))}
        nodes = self.node_metrics.setdefault(server_round, {})
        entry = nodes.setdefault(self.node_name(msg), {})
        entry.setdefault(FLOWER_NODE_ID, msg.metadata.src_node_id)
        entry.update(own)

    def node_name(self, reply: Message) -> str:
        """The name in this run's records of the node that sent `reply` (`NodeNames.of`)."""
        return self.names.of(reply)

    def name_of(self, flower_id: int) -> str:
        """A Flower node's name in this run (`NodeNames.of_id`)."""
        return self.names.of_id(flower_id)

    def _record(self, server_round: int, metrics: MetricRecord) -> None:
        """Clip counts add up over the run; everything else is this round's value."""
        for key in COUNT_KEYS:
            self.totals[key] += int(metrics.get(key, 0))
        self.round_metrics.setdefault(server_round, {}).update(
            {k: v for k, v in metrics.items() if k not in COUNT_KEYS})
