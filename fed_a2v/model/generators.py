"""Per-class generators of audio-encoder token sequences: what a node can send the server instead
of its clips, so that the server can distil the nodes' adapters on samples of every class
(`adapter_aggregation_mode` `kd`, `fed_a2v.model.distill`).

A class's generator is a low-rank Gaussian over its clips' token sequences, flattened
(probabilistic PCA): a sample is the class's mean sequence, plus a combination of the leading
directions in which its clips differ (each scaled by their spread along it), plus isotropic noise
holding the rest of the variance. Fitted in closed form (one SVD), so it needs no epochs and no
GPU. A node holds tens of clips per class and a sequence has `T x d` values (1214 x 768 for the
AST): a model with more parameters than the node has clips, such as a VAE over the whole
sequence, can only memorise them; the Gaussian estimates what those clips do determine, their
mean and their leading directions. With `granularity` `unified` (or `per_group`) the classes
(of a group) share the directions, fitted on each clip's difference from its class mean.

Two more kinds exist for the study of KD (never the default): `replay` keeps the clips' token
sequences themselves (the oracle transfer set: it sends the node's encoded data), `noise` is
one class-blind Gaussian with the node's mean and spread (the lower bound).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fed_a2v.files import atomic_write

GENERATOR_KINDS = ("gaussian", "replay", "noise")
GRANULARITIES = ("per_class", "unified", "per_group")


@dataclass
class ClassGenerator:
    """One class's generator. `points` `(m, T, d)`: the mean sequence (m = 1), or, for
    `replay`, the clips themselves; `basis` `(r, T*d)` orthonormal directions, `scales` `(r,)`
    the spread along each, `noise` the standard deviation of every other direction; `count`:
    the clips it was fitted on (its weight when generators of one class are merged)."""

    points: torch.Tensor
    basis: torch.Tensor
    scales: torch.Tensor
    noise: float
    count: int

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.points.shape[1:])

    def sample(self, n: int, rng: torch.Generator) -> torch.Tensor:
        """`(n, T, d)` float32 token sequences."""
        pick = torch.randint(len(self.points), (n,), generator=rng)
        out = self.points.index_select(0, pick).flatten(1).clone()
        if len(self.basis):
            z = torch.randn(n, len(self.basis), generator=rng)
            out += (z * self.scales) @ self.basis
        if self.noise > 0:
            out += self.noise * torch.randn(out.shape, generator=rng)
        return out.reshape(n, *self.shape)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"points": self.points.numpy(), "basis": self.basis.numpy(),
                "scales": self.scales.numpy(),
                "noise": np.array([self.noise], np.float32),
                "count": np.array([self.count], np.int64)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], where: str) -> ClassGenerator:
        """The inverse of `arrays`; ValueError naming `where` for shapes that do not fit."""
        missing = {"points", "basis", "scales", "noise", "count"} - set(arrays)
        if missing:
            raise ValueError(f"{where}: a generator without {', '.join(sorted(missing))}")
        points = torch.as_tensor(np.asarray(arrays["points"], np.float32))
        basis = torch.as_tensor(np.asarray(arrays["basis"], np.float32))
        scales = torch.as_tensor(np.asarray(arrays["scales"], np.float32))
        noise, count = float(np.asarray(arrays["noise"]).item()), int(np.asarray(
            arrays["count"]).item())
        if (points.ndim != 3 or basis.ndim != 2 or scales.shape != (len(basis),)
                or (len(basis) and basis.shape[1] != points[0].numel()) or not len(points)):
            raise ValueError(f"{where}: generator shapes do not fit: points "
                             f"{tuple(points.shape)}, basis {tuple(basis.shape)}, scales "
                             f"{tuple(scales.shape)}")
        values = (points, basis, scales, torch.tensor([noise]))
        if not all(torch.isfinite(v).all() for v in values) or noise < 0 or count < 1:
            raise ValueError(f"{where}: a generator with non-finite values, a negative noise "
                             "or no clips")
        return cls(points, basis, scales, noise, count)


def _leading(s: torch.Tensor, rank: int, width: int) -> int:
    """How many of the singular values `s` (descending) to keep as directions: at most `rank`,
    none that is zero next to the largest, fewer than `width`."""
    return min(rank, int((s > s.max() * 1e-6).sum()) if s.numel() else 0, width - 1)


def _spread(residuals: torch.Tensor, dof: int, rank: int
            ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Probabilistic PCA of `(n, D)` residuals with `dof` degrees of freedom: the leading
    `rank` directions, the spread along each, the noise of the others."""
    width = residuals.shape[1]
    if dof < 1:
        return torch.zeros(0, width), torch.zeros(0), 0.0
    # float32: at the AST's width a clip's residual is 932k values; its singular values are
    # summed in float64 below
    _, s, vh = torch.linalg.svd(residuals.float(), full_matrices=False)
    s = s.double()
    variances = s.pow(2) / dof
    kept = _leading(s, rank, width)
    rest = float(variances.sum() - variances[:kept].sum())
    noise = math.sqrt(max(rest, 0.0) / (width - kept)) if width > kept else 0.0
    scales = (variances[:kept] - noise**2).clamp_min(0).sqrt()
    return vh[:kept].float(), scales.float(), noise


def fit_generators(tokens: torch.Tensor, labels: Sequence[str], kind: str = "gaussian",
                   granularity: str = "per_class", rank: int = 8,
                   groups: Mapping[str, Sequence[str]] | None = None
                   ) -> dict[str, ClassGenerator]:
    """One generator per class of `labels` from the clips' `tokens` `(N, T, d)`.

    `granularity` `per_class`: each class its own directions; `unified`: one set, fitted on
    every clip's difference from its class mean; `per_group`: one per group of `groups`
    (group name -> classes; a class in none is its own group)."""
    if kind not in GENERATOR_KINDS:
        raise ValueError(f"generator_type '{kind}': expected one of {', '.join(GENERATOR_KINDS)}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"generator_granularity '{granularity}': expected one of "
                         f"{', '.join(GRANULARITIES)}")
    if rank < 0:
        raise ValueError(f"generator rank {rank}: must be at least 0")
    if len(tokens) != len(labels) or not len(labels):
        raise ValueError(f"{len(tokens)} token sequences for {len(labels)} labels")
    tokens = tokens.float()
    labels = list(labels)
    by_class = {c: torch.tensor([i for i, x in enumerate(labels) if x == c])
                for c in dict.fromkeys(labels)}
    if kind == "replay":
        return {c: ClassGenerator(tokens[i], torch.zeros(0, tokens[0].numel()), torch.zeros(0),
                                  0.0, len(i)) for c, i in by_class.items()}
    if kind == "noise":  # class-blind: every class the same Gaussian, the node's own
        mean = tokens.mean(dim=(0, 1), keepdim=True).expand(1, *tokens.shape[1:])
        noise = float(tokens.std())
        return {c: ClassGenerator(mean.clone(), torch.zeros(0, tokens[0].numel()),
                                  torch.zeros(0), noise, len(i)) for c, i in by_class.items()}
    means = {c: tokens[i].mean(0) for c, i in by_class.items()}
    out = {}
    for members in class_groups(list(by_class), granularity, groups):
        rows = torch.cat([by_class[c] for c in members])
        residuals = torch.cat([(tokens[by_class[c]] - means[c]).flatten(1) for c in members])
        basis, scales, noise = _spread(residuals, len(rows) - len(members), rank)
        for c in members:
            out[c] = ClassGenerator(means[c][None], basis, scales, noise, len(by_class[c]))
    return out


def class_groups(classes: list[str], granularity: str,
                 groups: Mapping[str, Sequence[str]] | None) -> list[list[str]]:
    """Which classes share their directions."""
    if granularity == "per_class":
        return [[c] for c in classes]
    if granularity == "unified":
        return [classes]
    grouped = []
    for members in (groups or {}).values():
        held = [c for c in members if c in classes]
        if held:
            grouped.append(held)
    seen = {c for g in grouped for c in g}
    return grouped + [[c] for c in classes if c not in seen]


def merge_generators(parts: Sequence[ClassGenerator], rank: int) -> ClassGenerator:
    """One generator for a class from the generators of the nodes that hold it: the clips of a
    `replay` kind put together; otherwise the Gaussian whose mean and covariance are those of
    the mixture weighted by `count` (moment matching), its directions cut back to `rank`. The
    server keeps one generator per class, however many nodes hold it."""
    if len(parts) == 1:
        return parts[0]
    total = sum(p.count for p in parts)
    if all(len(p.points) > 1 or (not len(p.basis) and p.noise == 0) for p in parts):
        return ClassGenerator(torch.cat([p.points for p in parts]), parts[0].basis[:0],
                              parts[0].scales[:0], 0.0, total)
    if any(len(p.points) != 1 for p in parts):
        raise ValueError("a replay generator and a Gaussian one cannot be merged")
    weights = [p.count / total for p in parts]
    mean = sum(w * p.points[0].double() for w, p in zip(weights, parts, strict=True))
    factors = [math.sqrt(w) * torch.cat([p.scales[:, None].double() * p.basis.double(),
                                         (p.points[0].double() - mean).flatten()[None]])
               for w, p in zip(weights, parts, strict=True)]
    width = mean.numel()
    noise_var = sum(w * p.noise**2 for w, p in zip(weights, parts, strict=True))
    _, s, vh = torch.linalg.svd(torch.cat(factors), full_matrices=False)
    kept = _leading(s, rank, width)
    noise = math.sqrt(noise_var + float(s[kept:].pow(2).sum()) / width)
    return ClassGenerator(mean.float()[None], vh[:kept].float(), s[:kept].float(), noise, total)


def flatten(generators: Mapping[str, ClassGenerator]) -> dict[str, np.ndarray]:
    """Generators as one flat dict of arrays, `<i>.<field>` for the i-th class (their order
    is the class list that goes with them): how they travel and how they are saved."""
    return {f"{i}.{k}": v for i, g in enumerate(generators.values())
            for k, v in g.arrays().items()}


def unflatten(arrays: Mapping[str, np.ndarray], classes: Sequence[str], where: str
              ) -> dict[str, ClassGenerator]:
    """The inverse of `flatten` for `classes`; ValueError naming `where`."""
    fields: dict[int, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        index, _, field = key.partition(".")
        if not index.isdigit() or int(index) >= len(classes):
            raise ValueError(f"{where}: unexpected generator array '{key}'")
        fields.setdefault(int(index), {})[field] = value
    return {name: ClassGenerator.from_arrays(fields.get(i, {}), f"{where}, class {name}")
            for i, name in enumerate(classes)}


# Files under upstream's names: {dir}/{base}_node{id}_class_{c}_round_{r}.pt (per_class),
# ..._group_{g}_round_{r}.pt (per_group), {base}_node{id}_round_{r}.pt (unified).

def checkpoint_name(base: str, node: int, granularity: str, key: str | None,
                    round_num: int) -> str:
    suffix = {"per_class": f"_class_{key}", "per_group": f"_group_{key}",
              "unified": ""}[granularity]
    return f"{base}_node{node}{suffix}_round_{round_num}.pt"


def save_checkpoints(generators: Mapping[str, ClassGenerator], folder: Path, base: str,
                     node: int, granularity: str, round_num: int,
                     groups: Mapping[str, Sequence[str]] | None = None) -> list[Path]:
    """Write a node's generators under upstream's file names, one file per class (per_class),
    per group, or one in all (unified). Each file: torch tensors, loadable with
    `weights_only=True`, and a `classes` list saying which class each entry is."""
    folder.mkdir(parents=True, exist_ok=True)
    if granularity == "per_class":
        files = {c: [c] for c in generators}
    elif granularity == "unified":
        files = {None: list(generators)}
    else:
        files = {}
        for members in class_groups(list(generators), "per_group", groups):
            name = next((g for g, m in (groups or {}).items() if members[0] in m), members[0])
            files[name] = members
    paths = []
    for key, members in files.items():
        path = folder / checkpoint_name(base, node, granularity, key, round_num)
        payload = {"format": "fed_a2v.generators/1", "granularity": granularity,
                   "round": round_num, "node": node, "classes": json.dumps(members),
                   **{k: torch.from_numpy(v)
                      for k, v in flatten({c: generators[c] for c in members}).items()}}
        atomic_write(path, lambda tmp, payload=payload: torch.save(payload, tmp))
        paths.append(path)
    return paths


def load_checkpoint(path: Path) -> dict[str, ClassGenerator]:
    """The generators of one file written by `save_checkpoints`; ValueError naming the file
    for anything else (upstream's own VAE checkpoints among them)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a file that is not its own
        raise ValueError(f"{path}: not a generator checkpoint FedA2V can read ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != "fed_a2v.generators/1":
        raise ValueError(f"{path}: not a FedA2V generator checkpoint (upstream's VAE "
                         "checkpoints cannot be read: train the generators again with FedA2V)")
    arrays = {k: v.numpy() for k, v in payload.items()
              if isinstance(k, str) and isinstance(v, torch.Tensor)}
    return unflatten(arrays, json.loads(payload["classes"]), str(path))


def latest_checkpoints(folder: Path, base: str) -> dict[int, list[Path]]:
    """Node id -> the files of its latest round in `folder` under `base`."""
    pattern = re.compile(rf"{re.escape(base)}_node(\d+)(?:_(?:class|group)_.+)?_round_(\d+)\.pt")
    found: dict[int, dict[int, list[Path]]] = {}
    for path in sorted(folder.glob(f"{base}_node*_round_*.pt")):
        m = pattern.fullmatch(path.name)
        if m:
            found.setdefault(int(m[1]), {}).setdefault(int(m[2]), []).append(path)
    return {node: rounds[max(rounds)] for node, rounds in found.items()}


@dataclass(frozen=True)
class NodePart:
    """One node's generator of one class, and the file it came from."""

    node: int
    path: Path
    generator: ClassGenerator


def required_checkpoints(folder: Path, base: str) -> dict[int, list[Path]]:
    """`latest_checkpoints`, or FileNotFoundError naming the folder where there are none."""
    found = latest_checkpoints(folder, base) if folder.is_dir() else {}
    if not found:
        raise FileNotFoundError(
            f"{folder}: no generator files '{base}_node<id>_class_<c>_round_<r>.pt' (the nodes "
            "save them with feda2v.generator_save_checkpoint or generator_training_mode)")
    return found


def load_latest(folder: Path, base: str) -> dict[str, list[NodePart]]:
    """Class -> its generators in each node's latest files in `folder` under `base`;
    FileNotFoundError where there are none, ValueError for a file FedA2V cannot read."""
    parts: dict[str, list[NodePart]] = {}
    for node, paths in sorted(required_checkpoints(folder, base).items()):
        for path in paths:
            for name, generator in load_checkpoint(path).items():
                parts.setdefault(name, []).append(NodePart(node, path, generator))
    return parts


def merge_parts(parts: Mapping[str, Sequence[NodePart]], rank: int | None = None
                ) -> dict[str, ClassGenerator]:
    """One generator per class (sorted), merged over its nodes (`merge_generators`) keeping
    `rank` directions (None: the most any part has)."""
    merged = {}
    for name in sorted(parts):
        generators = [p.generator for p in parts[name]]
        keep = max(len(g.basis) for g in generators) if rank is None else rank
        merged[name] = merge_generators(generators, keep)
    return merged


def iter_samples(generator: ClassGenerator, total: int, seed: int, chunk: int = 32
                 ) -> Iterator[torch.Tensor]:
    """`total` samples of `generator` in chunks, the same for the same seed."""
    rng = torch.Generator().manual_seed(seed)
    for start in range(0, total, chunk):
        yield generator.sample(min(chunk, total - start), rng)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to the rows of `a` and `b` `(n, d)`:
    `|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2)`."""
    a, b = a.double(), b.double()

    def sqrt_psd(m: torch.Tensor) -> torch.Tensor:
        values, vectors = torch.linalg.eigh((m + m.T) / 2)
        return vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T

    ca, cb = torch.cov(a.T, correction=0).reshape(a.shape[1], -1), torch.cov(
        b.T, correction=0).reshape(b.shape[1], -1)
    root = sqrt_psd(ca)
    cross = torch.trace(sqrt_psd(root @ cb @ root))
    return float((a.mean(0) - b.mean(0)).pow(2).sum() + torch.trace(ca) + torch.trace(cb)
                 - 2 * cross)
