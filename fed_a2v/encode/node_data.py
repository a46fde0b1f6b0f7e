"""A node's identity and its clips, encoded once per process: the token arrays training and
evaluation read, from the token cache or freshly through the audio encoder."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from fed_a2v.config.schema import Config, NodeConfig
from fed_a2v.data.audio import AudioError, load_audio
from fed_a2v.data.corpora import Clip, Corpus
from fed_a2v.data.node_corpora import node_corpus
from fed_a2v.data.splits import split_for_node
from fed_a2v.encode.cache import TokenCache, TokenStore, cache_root
from fed_a2v.encode.encoded_set import EncodedSet
from fed_a2v.encode.target_set import Targets
from fed_a2v.encode.token_keys import token_cache_key

if TYPE_CHECKING:
    from fed_a2v.encode.encoders import AudioEncoder


log = logging.getLogger(__name__)

# Metrics a reply carries: how many audio clips the node encoded, read from its cache, skipped.
COUNT_KEYS = ("encoded-clips", "cached-clips", "skipped-clips")


@dataclass(frozen=True)
class NodeIdentity:
    settings: NodeConfig
    index: int  # which disjoint shard of the corpus is this node's
    num_nodes: int
    # The node's one name, in its log lines and in every record of the run: "node 2" (its
    # shard), its node JSON's file stem, or "node <Flower node id>" (see `identify`)
    name: str
    key: str = ""  # stable and distinct per node: seeds its training (see `node_seed`)
    source: str = ""  # where its settings come from: its node JSON, or the experiment's entry

    @property
    def where(self) -> str:
        """The node and the file its settings come from, for errors about them."""
        return f"{self.name} ({self.source})" if self.source else self.name


@dataclass
class NodeData:
    train: EncodedSet
    test: EncodedSet  # held out: `eval_*` metrics
    val: EncodedSet  # validation, possibly empty: `val_*` metrics
    hidden_size: int
    counts: dict[str, int] = field(default_factory=dict)  # encoded / cached / skipped clips
    skipped: list[str] = field(default_factory=list)  # "path: why" of every unusable clip
    # "train"/"val"/"test": content digests of the clips used (the server's overlap check)
    digests: dict[str, list[str]] = field(default_factory=dict)
    test_stems: list[str] = field(default_factory=list)  # file stems of the held-out clips

    def first_tokens(self, n: int) -> NodeData:
        """The same clips, the adapters seeing only each clip's first `n` tokens (n=1: the
        AST's CLS token). The token cache and this process's copy keep every token."""
        return replace(self, **{f.name: getattr(self, f.name).first_tokens(n)
                                for f in fields(self)
                                if isinstance(getattr(self, f.name), EncodedSet)})


class Encoding:
    """Turns clips into cached token arrays; the AST (and `transformers`) is loaded only if some
    clip needs it.

    Clips are encoded `batch_size` at a time and each written to the token cache at once:
    memory holds one batch of waveforms and tokens, and a crash keeps every batch done.
    """

    batch_size = 16

    def __init__(self, config: Config, ident: NodeIdentity) -> None:
        self.config, self.ident = config, ident
        root = node_cache_root(config, ident)
        key = token_cache_key(config.feda2v.audio_model_name, config.experiment.dtype,
                              config.dataset.clip_seconds, root)
        self.cache = TokenCache(root, key)
        self._encoder: AudioEncoder | None = None
        self.counts = dict.fromkeys(COUNT_KEYS, 0)
        self.skipped: list[str] = []
        self.digests: dict[Path, str] = {}  # clip path -> content digest (its cache entry)

    @property
    def encoder(self) -> AudioEncoder:
        if self._encoder is None:
            # Here, not at the top: the encoder needs `transformers`, which a node whose clips
            # are all in the token cache never imports (tests/test_node_startup.py).
            from fed_a2v.encode.encoders import AudioEncoder

            self._encoder = AudioEncoder.load(self.config.feda2v.audio_model_name,
                                              node_device(self.config, self.ident),
                                              self.config.experiment.dtype)
        return self._encoder

    def encode(self, clips: list[Clip]) -> tuple[list[Clip], list[np.ndarray]]:
        """The clips that could be used and their token arrays (cached or freshly encoded)."""
        arrays: dict[int, np.ndarray] = {}
        pending: list[tuple[int, Path, torch.Tensor]] = []
        for i, clip in enumerate(tqdm(clips, desc=f"{self.ident.name}: encoding", unit="clip",
                                      disable=None, leave=False)):
            try:
                entry = self.cache.path(clip.path)
                self.digests[clip.path] = entry.stem
                cached = self.cache.get(entry)
                if cached is not None:
                    arrays[i] = cached
                    self.counts["cached-clips"] += 1
                    continue
                wave = load_audio(clip.path, self.encoder.settings.sampling_rate,
                                  self.config.dataset.clip_seconds)
            except (OSError, AudioError) as err:  # reported and skipped, never fatal
                self.skipped.append(f"{clip.path}: {err}")
                continue
            pending.append((i, entry, wave))
            if len(pending) == self.batch_size:
                self._encode(pending, arrays)
                pending = []
        if pending:
            self._encode(pending, arrays)
        kept = sorted(arrays)
        return [clips[i] for i in kept], [arrays[i] for i in kept]

    def _encode(self, pending: list[tuple[int, Path, torch.Tensor]],
                arrays: dict[int, np.ndarray]) -> None:
        tokens = self.encoder.encode_batch([wave for _, _, wave in pending])
        for (i, entry, _), t in zip(pending, tokens, strict=True):
            arrays[i] = self.cache.put(entry, t)
        self.counts["encoded-clips"] += len(pending)


def encoded_set(clips: list[Clip], arrays: list, corpus: Corpus, rows: dict[str, int],
                 hidden: int) -> EncodedSet:
    if not clips:
        return EncodedSet(torch.empty(0, 0, hidden), torch.empty(0, dtype=torch.long))
    labels = torch.tensor([corpus.classes.index(c.label) for c in clips])
    keys = [c.caption if corpus.has_captions else c.label for c in clips]
    return EncodedSet(TokenStore(arrays), labels, torch.tensor([rows[k] for k in keys]))


_DATA: dict[str, NodeData] = {}


def node_data(config: Config, ident: NodeIdentity, targets: Targets) -> tuple[NodeData, bool]:
    """This node's clips, encoded (or read from the token cache) once per process.

    Returns the data and whether it was loaded by this call (False: kept from an earlier one).
    """
    key = json.dumps([asdict(config.dataset), asdict(config.experiment),
                      config.feda2v.audio_model_name, asdict(ident.settings), ident.index,
                      ident.num_nodes, targets.key])
    if key in _DATA:
        return _DATA[key], False
    corpus = node_corpus(config, ident.settings, ident.where)
    split = split_for_node(corpus, ident.settings, ident.index, ident.num_nodes, config,
                           where=ident.where)
    rows = {name: i for i, name in enumerate(targets.names)}
    for clip in split.train + split.val + split.test:
        needed = clip.caption if corpus.has_captions else clip.label
        if needed not in rows:
            raise ValueError(f"{ident.where}: '{needed}' ({clip.path.name}) has no target on "
                             "the server")
    encoding = Encoding(config, ident)
    train_clips, train_arrays = encoding.encode(split.train)
    test_clips, test_arrays = encoding.encode(split.test)
    val_clips, val_arrays = encoding.encode(split.val)
    encoding.counts["skipped-clips"] = len(encoding.skipped)
    if encoding.skipped:
        log.warning("%s: skipped %d unreadable clips:\n  %s", ident.name, len(encoding.skipped),
                    "\n  ".join(encoding.skipped))
    if not train_clips:
        raise ValueError(f"{ident.where}: no usable training clip (classes {split.classes})")
    hidden = int(train_arrays[0].shape[-1])
    data = NodeData(encoded_set(train_clips, train_arrays, corpus, rows, hidden),
                    encoded_set(test_clips, test_arrays, corpus, rows, hidden),
                    encoded_set(val_clips, val_arrays, corpus, rows, hidden), hidden,
                    encoding.counts, encoding.skipped,
                    {name: [encoding.digests[c.path] for c in clips] for name, clips in
                     (("train", train_clips), ("val", val_clips), ("test", test_clips))},
                    [c.path.stem for c in test_clips])
    log.info("%s: %d train / %d val / %d held-out clips of %d classes (%s)", ident.name,
             len(data.train), len(data.val), len(data.test), len(split.classes),
             ", ".join(f"{k} {v}" for k, v in encoding.counts.items()))
    _DATA[key] = data
    return data, True


def node_device(config: Config, ident: NodeIdentity) -> str:
    return ident.settings.device or config.experiment.device


def node_cache_root(config: Config, ident: NodeIdentity) -> Path:
    """The node's own cache folder wins over the experiment's."""
    return cache_root(ident.settings.cache_dir or config.experiment.cache_dir)
