"""Linear-probe baselines: the closed-form ridge map from pooled audio tokens to the targets,
solved on all nodes' training clips (centralized) and on each node's alone (local-only), scored
by held-out top-1 like the adapters (`fed_a2v.model.evaluation`).

A clip's features: the mean and the standard deviation of its tokens, its first two tokens and
a constant 1, `F = 4d + 1` values. Every clip's target is a row of the target table `T` (`K`
rows: classes or captions), so with `Y = onehot(rows) T` the ridge solution
`W = (XᵀX + λI)⁻¹ XᵀY` is `A T` with `A = (XᵀX + λI)⁻¹ S`, `S = Xᵀ onehot(rows)`: one `(F, K)`
map serves every adapter space, whatever its width. `XᵀX` and `S` add up over nodes, so the
ridge of the summed statistics is exactly the ridge of the pooled clips.

What the statistics reveal about a node (`federation.baselines`): per target row, the sum of its
clips' features (so their class-conditional means) and its clip count, and the second moments
of its features. No clip and no single clip's features leave a node unless it holds one clip of
a row.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType
from safetensors import safe_open
from safetensors.torch import load_file

from fed_a2v.encode.encoded_set import EncodedSet
from fed_a2v.federation.protocol import (
    RIDGE_COSINE,
    RIDGE_HITS,
    RIDGE_MAPS,
    RIDGE_REQUEST,
    RIDGE_STATS,
)
from fed_a2v.model.adapters import save_adapters
from fed_a2v.model.layers import token_statistics

log = logging.getLogger(__name__)

CENTRAL = "central"
FEATURES_TEXT = "mean and std over tokens, tokens 0 and 1, and a constant 1"


def feature_count(hidden: int) -> int:
    """`F`: the length of `pooled_features` for tokens of width `hidden`."""
    return 4 * hidden + 1


def pooled_features(tokens: torch.Tensor) -> torch.Tensor:
    """`(..., T, d)` tokens -> `(..., 4d + 1)` float64: mean, std (population) over tokens,
    token 0, token 1 (token 0 again for a single token: `use_cls_token_only`), 1."""
    t = tokens.double()
    return torch.cat([token_statistics(t), t.new_ones(*t.shape[:-2], 1)], dim=-1)


def encoded_features(data: EncodedSet, batch_size: int = 64) -> torch.Tensor:
    """`pooled_features` of every clip of `data`, `(N, F)`, reading `batch_size` clips at once."""
    return torch.cat([pooled_features(chunk) for chunk in data.tokens.chunks(batch_size)])


def _triu(size: int) -> torch.Tensor:
    return torch.triu_indices(size, size)


@dataclass
class RidgeStats:
    """`xtx` `(F, F)`, `sums` `(F, K)` (S: each target row's feature sum) and `counts` `(K,)`
    (clips per target row), float64. They add up over nodes (`+`)."""

    xtx: torch.Tensor
    sums: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def of(cls, x: torch.Tensor, rows: torch.Tensor, num_rows: int) -> RidgeStats:
        """Statistics of features `x` `(N, F)` whose targets are rows `rows` `(N,)` of `K`."""
        x = x.double()
        onehot = F.one_hot(rows.long(), num_rows).double()
        # A BLAS may round XᵀX's two triangles differently (seen: 3.6e-15 apart with MKL);
        # made exactly symmetric here, sums of them stay so and the wire format (one triangle)
        # rebuilds them bit for bit.
        xtx = x.T @ x
        return cls((xtx + xtx.T) / 2, x.T @ onehot, onehot.sum(0))

    def __add__(self, other: RidgeStats) -> RidgeStats:
        return RidgeStats(self.xtx + other.xtx, self.sums + other.sums,
                          self.counts + other.counts)

    @property
    def clips(self) -> int:
        return int(self.counts.sum().item())

    def to_arrays(self) -> dict[str, np.ndarray]:
        """As sent and stored: `xtx` as its upper triangle, row by row (it is symmetric)."""
        i, j = _triu(self.xtx.shape[0])
        return {"xtx": self.xtx[i, j].numpy(), "sums": self.sums.numpy(),
                "counts": self.counts.numpy()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], features: int,
                    num_rows: int) -> RidgeStats:
        """The inverse of `to_arrays`; ValueError unless the shapes fit `features` x
        `num_rows` and every value is finite (counts whole and not negative)."""
        expected = {"xtx": (features * (features + 1) // 2,), "sums": (features, num_rows),
                    "counts": (num_rows,)}
        shapes = {k: tuple(np.shape(v)) for k, v in arrays.items()}
        if shapes != expected:
            raise ValueError(f"ridge statistics of shapes {shapes}, expected {expected}")
        values = {k: torch.as_tensor(np.asarray(v), dtype=torch.float64) for k, v in arrays.items()}
        if not all(torch.isfinite(v).all() for v in values.values()):
            raise ValueError("ridge statistics hold non-finite values")
        counts = values["counts"]
        if (counts < 0).any() or (counts != counts.round()).any():
            raise ValueError("ridge statistics: clip counts must be whole and not negative")
        xtx = torch.zeros(features, features, dtype=torch.float64)
        i, j = _triu(features)
        xtx[i, j] = values["xtx"]
        xtx = xtx + xtx.triu(1).T
        return cls(xtx, values["sums"], counts)


def solve(stats: RidgeStats, lam: float) -> torch.Tensor:
    """`A = (XᵀX + λ' I)⁻¹ S`, `(F, K)`, with `λ' = lam` times the mean diagonal of `XᵀX`
    (so `lam` does not depend on the features' scale or the number of clips)."""
    size = stats.xtx.shape[0]
    scale = float(stats.xtx.diagonal().mean()) or 1.0
    ridge = stats.xtx + lam * scale * torch.eye(size, dtype=stats.xtx.dtype)
    return torch.linalg.solve(ridge, stats.sums)


def predict_rows(maps: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`(N, K)` coefficients over the target rows: the prediction for `x` is `coeffs @ T`."""
    return x.double() @ maps.double()


def nearest_rows(coeffs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`(N,)` the target row nearest by cosine to each prediction `coeffs @ T`, computed
    without the predictions: `cos(p, t_j)` ranks as `p · t_j / |t_j|`, so the scores are
    `coeffs @ (T T̂ᵀ)`, `(N, K) @ (K, K)`."""
    flat = targets.flatten(1).double()
    return (coeffs.double() @ (flat @ F.normalize(flat, dim=1).T)).argmax(dim=1)


def top1_hits(maps: torch.Tensor, x: torch.Tensor, targets: torch.Tensor,
              rows: torch.Tensor) -> int:
    """How many clips (features `x`, own target rows `rows`) the map gets right at top-1."""
    return int((nearest_rows(predict_rows(maps, x), targets) == rows).sum().item())


def own_cosines(coeffs: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`(N,)` the cosine of each prediction `coeffs @ T` to its own target row `rows[i]`, the
    held-out cosine the adapters report, computed through the rows' Gram matrix `G = T Tᵀ`:
    `p · t_y = (c G)_y` and `|p|² = c G cᵀ`, `(N, K) @ (K, K)` again."""
    flat = targets.flatten(1).double()
    gram = flat @ flat.T
    c = coeffs.double()
    cg = c @ gram
    own = cg.gather(1, rows.long()[:, None])[:, 0]
    norms = (cg * c).sum(1).clamp_min(0).sqrt() * gram.diagonal()[rows.long()].sqrt()
    return own / norms.clamp_min(torch.finfo(torch.float64).tiny)


# The node's side.

def stats_reply(request: ConfigRecord, node_key: str, train: EncodedSet,
                num_rows: int) -> dict[str, ArrayRecord]:
    """The statistics of the node's training clips, unless the server holds them already."""
    if node_key in json.loads(str(request["have"])):
        return {}
    stats = RidgeStats.of(encoded_features(train), train.target_ids, num_rows)
    return {RIDGE_STATS: ArrayRecord({k: Array(v) for k, v in stats.to_arrays().items()})}


def hits_reply(maps: ArrayRecord, test: EncodedSet,
               targets: dict[str, torch.Tensor]) -> dict[str, ConfigRecord]:
    """Held-out top-1 hits of every map sent, in every target space, and the sums of its
    predictions' cosines to their own targets."""
    record, cosines = ConfigRecord({"clips": len(test)}), ConfigRecord()
    if len(test):
        x = encoded_features(test)
        for name, array in maps.items():
            coeffs = predict_rows(torch.from_numpy(array.numpy()), x)
            for space, table in targets.items():
                key = f"{name}/{space}"
                record[key] = int((nearest_rows(coeffs, table) == test.target_ids).sum())
                cosines[key] = float(own_cosines(coeffs, table, test.target_ids).sum())
    return {RIDGE_HITS: record, RIDGE_COSINE: cosines}


# The server's side.

def saved_total(tensors: Mapping[str, torch.Tensor], features: int, num_rows: int) -> RidgeStats:
    """The summed statistics as `RidgeBaselines` keeps them in its file (`total.<field>`)."""
    return RidgeStats.from_arrays({k: tensors[f"total.{k}"].numpy()
                                   for k in ("xtx", "sums", "counts")}, features, num_rows)


class RidgeBaselines:
    """Asks each node once for the statistics of its training clips; keeps their sum
    (centralized ridge) and each node's own map (local-only ridge, solved on arrival, so the
    server holds one `(F, F)` matrix and N `(F, K)` maps); sends both to every node in the
    final evaluation and adds up the held-out hits the nodes report.

    `path`: where the statistics are kept for a resumed run (safetensors)."""

    def __init__(self, lam: float, hidden: int, num_rows: int, path: Path | None = None) -> None:
        self.lam, self.num_rows, self.path = lam, num_rows, path
        self.features = feature_count(hidden)
        self.total: RidgeStats | None = None
        self.local: dict[str, torch.Tensor] = {}  # node key -> its own map
        self.answered: set[int] = set()  # Flower ids asked and answered: asked no more
        self.stats_bytes: dict[str, int] = {}  # node key -> bytes of the stats it sent
        self.maps_bytes = 0  # all final-evaluation maps sent, all nodes
        self._maps: tuple[ArrayRecord, list[str]] | None = None  # built for the final round
        self.hits: dict[str, dict[str, int]] = {}  # map (CENTRAL or node key) -> space -> hits
        self.clips = 0  # held-out clips behind `hits`
        # map -> space -> sum of held-out cosines to the own target, over `cosine_clips` clips
        self.cosines: dict[str, dict[str, float]] = {}
        self.cosine_clips = 0
        self.eval_nodes = 0

    def records(self, node_id: int, kind: str, final: bool) -> dict[str, Any]:
        """What an instruction to `node_id` carries: a request for its statistics (train),
        the maps (the final evaluation)."""
        if kind == MessageType.TRAIN and node_id not in self.answered:
            return {RIDGE_REQUEST: ConfigRecord({"have": json.dumps(sorted(self.local))})}
        if kind == MessageType.EVALUATE and final and self.total is not None:
            maps = self.maps()
            self.maps_bytes += maps.count_bytes()
            return {RIDGE_MAPS: maps}
        return {}

    def take(self, reply: Message, node_key: str, name: str) -> None:
        """Take the statistics a train reply holds, if any (refused ones are logged)."""
        self.answered.add(reply.metadata.src_node_id)
        if RIDGE_STATS not in reply.content:
            return
        record = reply.content[RIDGE_STATS]
        if node_key in self.local:
            log.info("ridge statistics of %s arrived again: kept the first", name)
            return
        try:
            stats = RidgeStats.from_arrays({k: v.numpy() for k, v in record.items()},
                                           self.features, self.num_rows)
        except ValueError as err:
            log.warning("ridge statistics of %s refused: %s", name, err)
            return
        self.stats_bytes[node_key] = record.count_bytes()
        self._add(node_key, stats)
        self._save()

    def _add(self, node_key: str, stats: RidgeStats) -> None:
        self.total = stats if self.total is None else self.total + stats
        self.local[node_key] = solve(stats, self.lam)
        self._maps = None

    def maps(self) -> ArrayRecord:
        """`central` and `local.<i>` (the i-th node key in sorted order); a new record resets
        the hits it is scored by."""
        if self._maps is None:
            names = sorted(self.local)
            maps = {CENTRAL: solve(self.total, self.lam),
                    **{f"local.{i}": self.local[k] for i, k in enumerate(names)}}
            self._maps = ArrayRecord({k: Array(v.numpy()) for k, v in maps.items()}), names
            self.hits, self.clips, self.eval_nodes = {}, 0, 0
            self.cosines, self.cosine_clips = {}, 0
        return self._maps[0]

    @staticmethod
    def _scores(record: ConfigRecord, kind: type, names: list[str]
                ) -> list[tuple[str, str, Any]]:
        """`record`'s `<map>/<space>` values as (map name, space, value of `kind`), `local.<i>`
        named by `names[i]`; ValueError or IndexError if a key names no map sent or a value is
        not a `kind`."""
        return [(CENTRAL if m == CENTRAL else names[int(m.removeprefix("local."))], space,
                 kind(v))
                for key, v in record.items() if key != "clips"
                for m, space in [str(key).split("/", 1)]]

    def note_hits(self, reply: Message) -> None:
        """Add the held-out hits (and cosine sums, where sent) of one usable evaluate reply;
        ones out of range are left out."""
        if RIDGE_HITS not in reply.content or self._maps is None:
            return
        clips = int(reply.content[RIDGE_HITS]["clips"])
        if not self._add_scores(reply, RIDGE_HITS, int, lambda h: 0 <= h <= clips, self.hits,
                                clips):
            return
        self.clips += clips
        self.eval_nodes += 1
        # a cosine is within [-1, 1]; the slack is for float64 rounding at |cos| = 1
        if RIDGE_COSINE in reply.content and self._add_scores(
                reply, RIDGE_COSINE, float, lambda v: abs(v) <= clips * (1 + 1e-9),
                self.cosines, clips):
            self.cosine_clips += clips

    def _add_scores(self, reply: Message, key: str, kind: type, fits: Callable[[Any], bool],
                    into: dict[str, dict[str, Any]], clips: int) -> bool:
        """Add the reply's `key` record (`<map>/<space>` values of `kind`) into `into`, unless
        a key names no map sent or a value `fits` not (then logged, nothing added)."""
        try:
            scores = self._scores(reply.content[key], kind, self._maps[1])
        except (ValueError, IndexError):
            scores = None
        if scores is None or not all(fits(v) for *_, v in scores):
            log.warning("node %d reported %s that fit no map or not its %d clips: left out",
                        reply.metadata.src_node_id, key, clips)
            return False
        for name, space, v in scores:
            own = into.setdefault(name, {})
            own[space] = own.get(space, 0) + v
        return True

    def summary(self, fed: dict[str, float | None], names: Mapping[str, str],
                fed_cosine: Mapping[str, float | None] | None = None) -> dict[str, Any] | None:
        """`summary.json`'s `baselines`: top-1 over all held-out clips of the centralized and
        each node's ridge map, chance, FedA2V's final top-1 (`fed`: space -> value) and its
        gap to each, the nodes under their `names` (node key -> name); `held_out_cosine`, the
        maps' mean cosine to the own target beside FedA2V's (`fed_cosine`). None before any
        node reported hits."""
        if not self.clips or CENTRAL not in self.hits:
            return None
        spaces = sorted(self.hits[CENTRAL])
        top1 = {name: {f"{s}_top1": h.get(s, 0) / self.clips for s in spaces}
                for name, h in self.hits.items()}
        local = {names.get(k, k): v for k, v in top1.items() if k != CENTRAL}
        local_only: dict[str, Any] = {}
        for s in spaces:
            values = [v[f"{s}_top1"] for v in local.values()]
            if values:
                local_only |= {f"{s}_top1_mean": float(np.mean(values)),
                               f"{s}_top1_min": min(values), f"{s}_top1_max": max(values)}
        local_only["per_node"] = local
        chance = {f"{s}_top1": 1.0 / self.num_rows for s in spaces}
        fed_top1 = {f"{s}_top1": fed.get(s) for s in spaces}
        compared = {"ridge_centralized": top1[CENTRAL],
                    "local_only_ridge": {f"{s}_top1": local_only.get(f"{s}_top1_mean")
                                         for s in spaces},
                    "chance": chance}
        gap = {name: {k: (None if fed_top1[k] is None or v is None else fed_top1[k] - v)
                      for k, v in values.items()} for name, values in compared.items()}
        return {"features": f"{FEATURES_TEXT}: {self.features} values",
                "ridge_lambda": self.lam, "held_out_clips": self.clips,
                "evaluated_nodes": self.eval_nodes,
                "train_clips": self.total.clips if self.total is not None else 0,
                "nodes_with_stats": len(self.local),
                "ridge_centralized": top1[CENTRAL], "local_only_ridge": local_only,
                "chance": chance, "fedA2V": fed_top1, "gap": gap,
                "held_out_cosine": self._cosine_summary(spaces, fed_cosine or {}),
                "stats_bytes_per_node": {names.get(k, k): v
                                         for k, v in self.stats_bytes.items()},
                "maps_bytes_sent": self.maps_bytes}

    def _cosine_summary(self, spaces: list[str],
                        fed: Mapping[str, float | None]) -> dict[str, Any] | None:
        """Mean held-out cosine to the own target per space: FedA2V's, the centralized map's
        and the mean of the nodes' own maps'; None if no node sent cosines."""
        if not self.cosine_clips or CENTRAL not in self.cosines:
            return None
        mean = {name: {s: v.get(s, 0.0) / self.cosine_clips for s in spaces}
                for name, v in self.cosines.items()}
        local = [v for name, v in mean.items() if name != CENTRAL]
        return {"clips": self.cosine_clips, "fedA2V": {s: fed.get(s) for s in spaces},
                "ridge_centralized": mean[CENTRAL],
                "local_only_ridge": {s: float(np.mean([v[s] for v in local])) if local else None
                                     for s in spaces}}

    def progress(self) -> dict[str, Any]:
        """The small part a resumed run goes on from (the statistics are in `path`)."""
        return {"stats_bytes": self.stats_bytes, "maps_bytes": self.maps_bytes,
                "hits": self.hits, "clips": self.clips, "eval_nodes": self.eval_nodes,
                "cosines": self.cosines, "cosine_clips": self.cosine_clips}

    def restore(self, progress: dict[str, Any]) -> None:
        """Go on from `progress()` and the statistics saved in `path`."""
        self.stats_bytes.update(progress.get("stats_bytes", {}))
        self.maps_bytes += int(progress.get("maps_bytes", 0))
        self.hits = progress.get("hits", {})
        self.clips, self.eval_nodes = progress.get("clips", 0), progress.get("eval_nodes", 0)
        self.cosines = progress.get("cosines", {})
        self.cosine_clips = progress.get("cosine_clips", 0)
        if self.path is None or not self.path.exists():
            return
        tensors = load_file(str(self.path))
        with safe_open(str(self.path), "pt") as f:
            keys = json.loads((f.metadata() or {}).get("nodes", "[]"))
        self.total = saved_total(tensors, self.features, self.num_rows)
        self.local = {key: tensors[f"local.{i}"] for i, key in enumerate(keys)}
        self._maps = None
        log.info("ridge statistics of %d nodes from %s", len(keys), self.path)

    def _save(self) -> None:
        """The summed statistics and each node's map, for a resumed run."""
        if self.path is None or self.total is None:
            return
        keys = sorted(self.local)
        state = {**{f"total.{k}": torch.from_numpy(v) for k, v in self.total.to_arrays().items()},
                 **{f"local.{i}": self.local[k] for i, k in enumerate(keys)}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        save_adapters(state, self.path, {"nodes": json.dumps(keys)})
