"""The experiment's JSON config: its sections, their keys and defaults (the `feda2v` section in
fed_a2v.config.feda2v_section, the field rules in fed_a2v.config.field_rules).

One experiment file has the sections `experiment`, `federation`, `training`, `dataset`, `feda2v`,
`privacy`, `wandb` and `nodes`; a node's own JSON file has the shape of one `nodes` entry. Every
section and key is optional and falls back to its default. Unknown keys and bad values raise
`ConfigError` naming the file, the key path and what is allowed. Each field's metadata holds its
meaning (`doc`), from which fed_a2v.config.reference writes docs/configuration.md and the JSON
Schemas.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fed_a2v.config.feda2v_section import DIFFUSION_TYPES, FedA2VConfig
from fed_a2v.config.field_rules import ConfigError, rule

# A config file's pointer to its JSON Schema (docs/experiment.schema.json, node.schema.json), for
# editors; the loader ignores it at the top of an experiment or node file.
SCHEMA_KEY = "$schema"
DEVICE_PATTERN = r"cpu|auto|cuda(:[0-9]+)?"
# federation.transport_dtype: how adapters travel back to the server (fed_a2v.federation.transport)
TRANSPORT_DTYPES = ("fp32", "fp16", "bf16", "int8")
# federation.round_protocol: message stages per round (fed_a2v.federation.feda2v_strategy)
ROUND_PROTOCOLS = ("one_stage", "two_stage")
# Corpora generated on first use (fed_a2v.data.node_corpora), the others read from disk, and
# their classes: fed_a2v.data.node_corpora checks that its generators agree.
BUILTIN_CLASSES = {"synthetic": 12, "speech": 20, "instruments": 16, "italian_speech": 12,
                   "german_speech": 12, "spanish_speech": 12}
BUILTIN_DATASETS = tuple(BUILTIN_CLASSES)
# Corpus kinds; upstream spells them ESC50, VEGAS, VGGSound, MIXED (read case-insensitively).
DATASETS = (*BUILTIN_DATASETS, "esc50", "csv", "vegas", "vggsound", "folders")
# Flower's strategies FedA2V runs (fed_a2v.federation.flower_strategies)
STRATEGY_NAMES = ("FedAvg", "FedProx", "FedAvgM", "FedAdam", "FedYogi", "FedAdagrad",
                  "FedTrimmedAvg", "FedMedian", "Krum", "MultiKrum", "Bulyan")
PRIVACY_MECHANISMS = ("none", "client_fixed_clipping", "client_adaptive_clipping")


@dataclass
class ExperimentConfig:
    name: str = field(default="feda2v", metadata=rule("run directory prefix"))
    seed: int = field(default=0, metadata=rule(
        "seeds data generation, splits, adapter initialisation and batching"))
    output_dir: str = field(default="runs", metadata=rule("where run directories go"))
    device: str = field(default="cpu", metadata=rule(
        "where the encoders and adapters run: `cpu`, `cuda` (the first GPU), `cuda:N` or `auto` "
        "(a GPU when there is one); a node's own `device` wins",
        pattern=DEVICE_PATTERN, shown="cpu, auto, cuda, cuda:N"))
    dtype: str = field(default="fp32", metadata=rule(
        "precision of the frozen encoders (the adapters always train in fp32)",
        choices=("fp32", "fp16", "bf16")))
    cache_dir: str = field(default="", metadata=rule(
        "the encoded audio tokens and text targets; empty: `$FEDA2V_CACHE_DIR`, else "
        "`~/.cache/fed_a2v`; a node's own `cache_dir` wins"))


@dataclass
class FederationConfig:
    algorithm: str = field(default="FedA2V", metadata=rule(
        "upstream's name of the algorithm: a file that has this key is read in upstream's format "
        "(docs/upstream-config.md); FedA2V's own files leave it out",
        choices=("FedA2V",)))
    global_rounds: int = field(default=5, metadata=rule("federated rounds", min=1))
    num_clients: int | None = field(default=None, metadata=rule(
        "simulated nodes (`simulate --num-nodes` overrides it)",
        shown_default="the number of `nodes` entries (3 without any)", min=1))
    local_epochs: int = field(default=2, metadata=rule("epochs per round on each node", min=1))
    join_ratio: float = field(default=1.0, metadata=rule(
        "fraction of the nodes sampled for training each round", min_exclusive=0.0, max=1.0))
    min_clients: int | None = field(default=None, metadata=rule(
        "usable updates a round needs to change the adapters; a round is sent only when this "
        "many nodes are connected (it waits at most `quorum_timeout`)",
        shown_default="2 (fewer nodes: all)", min=1))
    eval_gap: int = field(default=1, metadata=rule(
        "nodes evaluate the global adapters after every `eval_gap`-th round and after the last",
        min=1))
    max_update_norm: float | None = field(default=None, metadata=rule(
        "a node's update is dropped for the round if an adapter moved further than this (L2)",
        shown_default="none: no limit", min_exclusive=0.0))
    round_protocol: str = field(default="one_stage", metadata=rule(
        "message stages per round (docs/rounds.md): `one_stage`, the nodes evaluate the global "
        "adapters they receive at the start of the next round's train message and reply with "
        "that evaluation beside their update (the last round has an evaluate stage of its own); "
        "`two_stage`, a train stage then an evaluate stage every round (Flower's `start`)",
        choices=ROUND_PROTOCOLS))
    quorum_timeout: float | None = field(default=None, metadata=rule(
        "seconds a round waits for `min_clients` connected nodes before the run stops, failed, "
        "after its last checkpoint (`--resume` goes on once the nodes are back); a round that "
        "got fewer than `min_clients` usable updates is run again once they are connected",
        shown_default="the round timeout (an hour before the first round, then 4x the slowest "
                      "round so far, at least 300 s)",
        min_exclusive=0.0))
    round_timeout: float | None = field(default=None, metadata=rule(
        "seconds a round waits for the nodes' replies; the replies in by then are aggregated (a "
        "dead node is not waited for)",
        shown_default="an hour for the first round, then 4x the slowest round so far, at least "
                      "300 s",
        min_exclusive=0.0))
    allow_overlap: bool = field(default=False, metadata=rule(
        "nodes may share clips; otherwise a clip two nodes train on, or one node's held-out clip "
        "in another's training set, is an error (`validate`/`simulate` before the run, the "
        "server from salted content digests the nodes send once; no audio leaves a node)"))
    transport_dtype: str = field(default="fp32", metadata=rule(
        "how nodes send their adapters back (fed_a2v.federation.transport): `fp32`; `fp16` or "
        "`bf16` (half the bytes); `int8` (a quarter: each tensor's change from the round's "
        "global adapters, scaled by its largest value / 127). The server averages in float64 "
        "whatever the dtype; the global adapters go to the nodes in fp32",
        choices=TRANSPORT_DTYPES))
    strategy: str = field(default="FedAvg", metadata=rule(
        "Flower's strategy that makes the global adapters from a round's updates "
        "(fed_a2v.federation.flower_strategies; configuration-guide.md, Strategies)",
        choices=STRATEGY_NAMES))
    strategy_options: dict[str, float | int] = field(default_factory=dict, metadata=rule(
        "the strategy class's own keyword arguments, e.g. `{\"proximal_mu\": 0.01}`, "
        "`{\"eta\": 0.01}`, `{\"num_malicious_nodes\": 1}`; an unknown one is an error that lists "
        "the class's options"))
    baselines: bool = field(default=True, metadata=rule(
        "ridge baselines beside FedA2V in `summary.json` and `report.md` "
        "(fed_a2v.federation.baselines): each node sends, once, XᵀX and per-target-row sums of "
        "its training clips' pooled tokens and its clip count per row (so the class means of "
        "its features); `false`: nothing besides the adapters is sent"))
    baseline_ridge_lambda: float = field(default=1e-3, metadata=rule(
        "the baselines' ridge λ, relative to the mean diagonal of XᵀX", min_exclusive=0.0))


@dataclass
class TrainingConfig:
    batch_size: int = field(default=16, metadata=rule(
        "local batch size; a node's own `batch_size` wins", min=1))
    optimizer: str = field(default="AdamW", metadata=rule(
        "one AdamW per adapter", choices=("AdamW",)))
    learning_rate: float = field(default=3e-3, metadata=rule(
        "learning rate of an adapter without its own (`feda2v.{clip,t5}_adapter_learning_rate`)"
        "; 3e-3 since the default recipe of docs/corpora.md (1e-3 before, upstream's)",
        min_exclusive=0.0))
    weight_decay: float = field(default=1e-4, metadata=rule(
        "weight decay of an adapter without its own (`feda2v.{clip,t5}_adapter_weight_decay`)",
        min=0.0))
    gradient_accumulation_steps: int = field(default=1, metadata=rule(
        "batches per optimizer step", min=1))
    eval_batch_size: int = field(default=64, metadata=rule(
        "held-out evaluation batch size", min=1))


@dataclass
class DatasetConfig:
    name: str = field(default="synthetic", metadata=rule(
        "the corpus kind: `synthetic`, `speech`, `instruments`, `italian_speech`, "
        "`german_speech`, `spanish_speech` (built-in, generated on first use); `esc50` (an "
        "ESC-50 layout folder, official or upstream's); `csv` (a manifest); "
        "`folders` (class folders, `<class>/*.wav`); `vegas`, `vggsound` (their layouts: "
        "docs/upstream-config.md); `mixed`: each node names its own (`nodes.*.dataset`), each "
        "found in `paths`",
        choices=(*DATASETS, "mixed")))
    path: str = field(default="", metadata=rule(
        "the corpus: built-in and `esc50`, a folder with `meta/esc50.csv` and `audio/`; `csv`, a "
        "manifest file, or a folder holding `manifest.csv` (columns `path,label` and optional "
        "`caption`, `split`, `fold`; audio paths relative to the manifest); `folders`, a folder "
        "of class folders holding `.wav`, `.flac`, `.ogg` or `.mp3` files; `vegas`/`vggsound`, "
        "the folder layouts of docs/upstream-config.md. Every real corpus needs it; empty, a "
        "built-in corpus gets one folder per generation settings (`Config.dataset_path`); a "
        "node's own `dataset_path` wins",
        shown_default="`\"\"`; built-in: `data/<name>-seed<S>-<classes>x<clips>-<sec>s-<rate>hz`"))
    paths: dict[str, str] = field(default_factory=dict, metadata=rule(
        "where each kind of corpus is, by dataset name, for federations that mix them, e.g. "
        "`{\"esc50\": \"/data/ESC-50\", \"vegas\": \"/data/VEGAS\"}`",
        keys=DATASETS))
    partition: str = field(default="nodes", metadata=rule(
        "`nodes`: each node's classes come from its `nodes` entry, its clips from a stratified "
        "shard; `dirichlet`: shards draw each class's clips in Dirichlet(`dirichlet_alpha`) "
        "proportions; `classes` (upstream's way): a node holds every clip of its classes, cut "
        "only by its own `node_split_id` / `num_nodes` / `samples_per_node`",
        choices=("nodes", "dirichlet", "classes")))
    dirichlet_alpha: float = field(default=0.5, metadata=rule(
        "the Dirichlet concentration of `partition` `dirichlet`: smaller is more skewed",
        min_exclusive=0.0))
    prompt_template: str = field(default="{label}", metadata=rule(
        "the text a class's targets encode, e.g. `\"the sound of a {label}\"`; only `{label}` "
        "may be used; underscores in labels become spaces"))
    use_folds: bool | None = field(default=None, metadata=rule(
        "`true`: train/val/test by folds (numbered as in the corpus: ESC-50's CSV counts 1-5); "
        "`false`: by ratios, per node, seeded by `node_split_seed`",
        shown_default="by folds where the corpus has them (ESC-50; manifests and class "
                      "folders, whose clips without a fold or split are dealt into folds 1-5 "
                      "per class, seeded by `experiment.seed`), else by ratios (VEGAS)"))
    train_folds: list[int] = field(default_factory=lambda: [1, 2, 3, 4], metadata=rule(
        "fold splits: the folds for training"))
    val_folds: list[int] | None = field(default=None, metadata=rule(
        "fold splits: the folds for validation",
        shown_default="none: `val_ratio` of the training folds (0: no val)"))
    test_folds: list[int] = field(default_factory=lambda: [5], metadata=rule(
        "fold splits: the folds for held-out evaluation"))
    train_ratio: float = field(default=0.8, metadata=rule(
        "ratio splits: the training share, per class when `stratify`", min=0.0, max=1.0))
    val_ratio: float | None = field(default=None, metadata=rule(
        "ratio splits: the validation share; fold splits without `val_folds`: the share of the "
        "training folds held out for validation",
        shown_default="0.1 with ratio splits, 0 with fold splits", min=0.0, max=1.0))
    test_ratio: float | None = field(default=None, metadata=rule(
        "ratio splits: the held-out share",
        shown_default="what `train_ratio` and `val_ratio` leave (1 - train - val), as upstream "
                      "computed it",
        min=0.0, max=1.0))
    stratify: bool = field(default=True, metadata=rule(
        "ratio splits are made per class"))
    node_split_seed: int = field(default=42, metadata=rule(
        "seeds the ratio splits (with the node's split id or index) and, with `partition` "
        "`classes`, the shuffle before a node's block is cut"))
    num_samples_per_class: int | None = field(default=None, metadata=rule(
        "each node keeps at most the first N clips of each class",
        shown_default="none: every clip", min=1))
    clip_seconds: float = field(default=5.0, metadata=rule(
        "clips are padded or trimmed to this length (seconds)", min_exclusive=0.0))
    num_classes: int = field(default=10, metadata=rule(
        "built-in corpora only: the classes the generator writes on first use, at most the "
        "corpus's own (synthetic 12, speech 20, instruments 16, italian_speech, "
        "german_speech and spanish_speech 12)", min=2))
    clips_per_class: int = field(default=40, metadata=rule(
        "built-in corpora only: the clips generated per class", min=5))
    sample_rate: int = field(default=22050, metadata=rule(
        "built-in corpora only: the generated clips' sample rate (Hz)", min=8000))


@dataclass
class WandbConfig:
    """Weights & Biases logging beside TensorBoard (`pip install fed-a2v[wandb]`)."""

    disabled: bool = field(default=True, metadata=rule(
        "`false`: log every series to a W&B run as well (`pip install 'fed-a2v[wandb]'`); "
        "TensorBoard is written either way (with the `plots` extra)"))
    project: str = field(default="fed-a2v", metadata=rule("the W&B project"))
    entity: str | None = field(default=None, metadata=rule(
        "the W&B entity (user or team)", shown_default="none: wandb's default"))
    mode: str | None = field(default=None, metadata=rule(
        "how W&B logs: `online`, `offline` (to `<run dir>/wandb/`, for `wandb sync`) or "
        "`disabled`",
        shown_default="`$WANDB_MODE`, else wandb's own default",
        choices=("online", "offline", "disabled")))


@dataclass
class PrivacyConfig:
    """Central differential privacy at node level (fed_a2v.federation.privacy): every node clips its
    adapter update (all adapters together, L2) with Flower's ClientApp mod, the server adds
    Gaussian noise to the mean of the clipped updates, and an RDP accountant gives ε."""

    mechanism: str = field(default="none", metadata=rule(
        "node-level differential privacy with Flower's wrappers: `client_fixed_clipping` or "
        "`client_adaptive_clipping`; needs `feda2v.adapter_aggregation_mode` `avg`, "
        "`federation.transport_dtype` `fp32`, `federation.baselines` `false` and "
        "`federation.strategy` `FedAvg` or `FedProx`",
        choices=PRIVACY_MECHANISMS))
    noise_multiplier: float = field(default=1.0, metadata=rule(
        "σ: the noise's stdev on the sum of the round's clipped updates over `clipping_norm`; "
        "0: clipping only, no guarantee (ε is infinite)", min=0.0))
    clipping_norm: float = field(default=1.0, metadata=rule(
        "L2 bound of one node's update (all adapters together); for adaptive clipping, the first "
        "round's bound", min_exclusive=0.0))
    target_clipped_quantile: float = field(default=0.5, metadata=rule(
        "adaptive clipping (Andrew et al., Flower's name and default): the fraction of the "
        "nodes' updates the bound should clip", min=0.0, max=1.0))
    clip_norm_lr: float = field(default=0.2, metadata=rule(
        "adaptive clipping: the bound's geometric step per round", min_exclusive=0.0))
    clipped_count_stddev: float | None = field(default=None, metadata=rule(
        "adaptive clipping: the noise on the count of clipped updates; must exceed "
        "`noise_multiplier` / 2",
        shown_default="sampled nodes / 20", min_exclusive=0.0))
    delta: float = field(default=1e-5, metadata=rule(
        "the δ of the reported (ε, δ); must be below 1 / `federation.num_clients`",
        min_exclusive=0.0))


@dataclass
class NodeConfig:
    """One node's own settings: which data it holds and how it runs. Unset keys take the
    experiment's (`dataset`, `feda2v`) value."""

    dataset: str | None = field(default=None, metadata=rule(
        "this node's corpus kind; in a `mixed` federation found in `dataset.paths`",
        shown_default="`dataset.name`", choices=DATASETS))
    selected_classes: list[str] | None = field(default=None, metadata=rule(
        "the classes this node holds", shown_default="every class of the corpus"))
    excluded_classes: list[str] | None = field(default=None, metadata=rule(
        "classes this node leaves out (not with `selected_classes`)", shown_default="none"))
    use_folds: bool | list[int] | None = field(default=None, metadata=rule(
        "`true`/`false`: fold or ratio splits; a list: fold splits using only these folds",
        shown_default="`dataset.use_folds`"))
    train_folds: list[int] | None = field(default=None, metadata=rule(
        "this node's training folds", shown_default="`dataset.train_folds`"))
    val_folds: list[int] | None = field(default=None, metadata=rule(
        "this node's validation folds", shown_default="`dataset.val_folds`"))
    test_folds: list[int] | None = field(default=None, metadata=rule(
        "this node's held-out folds", shown_default="`dataset.test_folds`"))
    train_ratio: float | None = field(default=None, metadata=rule(
        "this node's training share of a ratio split", shown_default="`dataset.train_ratio`",
        min=0.0, max=1.0))
    val_ratio: float | None = field(default=None, metadata=rule(
        "this node's validation share", shown_default="`dataset.val_ratio`", min=0.0,
        max=1.0))
    test_ratio: float | None = field(default=None, metadata=rule(
        "this node's held-out share of a ratio split", shown_default="`dataset.test_ratio`",
        min=0.0, max=1.0))
    stratify: bool | None = field(default=None, metadata=rule(
        "this node's ratio splits are made per class", shown_default="`dataset.stratify`"))
    num_samples_per_class: int | None = field(default=None, metadata=rule(
        "this node keeps at most the first N clips of each class",
        shown_default="`dataset.num_samples_per_class`", min=1))
    samples_per_node: int | None = field(default=None, metadata=rule(
        "`dataset.partition` `classes`: this node's block of N clips per class (with "
        "`node_split_id`; not with `num_nodes`)", shown_default="none", min=1))
    node_split_seed: int | None = field(default=None, metadata=rule(
        "seeds this node's ratio splits", shown_default="`dataset.node_split_seed`"))
    node_split_id: int | None = field(default=None, metadata=rule(
        "which shard of the corpus is this node's (0-based); a node JSON with neither this "
        "nor `num_nodes` uses its node's whole corpus, a shard of several needs both",
        shown_default="in simulation, the node's id; in a node's own file, 0", min=0))
    num_nodes: int | None = field(default=None, metadata=rule(
        "how many shards the corpus is cut into",
        shown_default="in simulation, `federation.num_clients`; in a node's own file, 1", min=1))
    diffusion_type: str | None = field(default=None, metadata=rule(
        "must equal `feda2v.diffusion_type` (sd and flux adapters cannot be averaged)",
        shown_default="`feda2v.diffusion_type`", choices=DIFFUSION_TYPES))
    use_cls_token_only: bool | None = field(default=None, metadata=rule(
        "this node's adapters see only the AST's first (CLS) token",
        shown_default="`feda2v.use_cls_token_only`"))
    dataset_path: str | None = field(default=None, metadata=rule(
        "this node's corpus folder or manifest", shown_default="`dataset.path`"))
    cache_dir: str | None = field(default=None, metadata=rule(
        "this node's token and target cache", shown_default="`experiment.cache_dir`"))
    device: str | None = field(default=None, metadata=rule(
        "where this node's encoders and adapters run", shown_default="`experiment.device`",
        pattern=DEVICE_PATTERN, shown="cpu, auto, cuda, cuda:N"))
    batch_size: int | None = field(default=None, metadata=rule(
        "this node's local batch size", shown_default="`training.batch_size`", min=1))
    pipeline: str | None = field(default=None, metadata=rule(
        "the FLUX pipeline this node renders with (`feda2v.generate_nodes_images_frequency`)",
        shown_default="`feda2v.generation_pipeline`"))
    images_dir: str | None = field(default=None, metadata=rule(
        "this node's own image folder: `<images_dir>/<run id>/round_<r>/<clip stem>.png`",
        shown_default="`feda2v.images_output_dir`"))

    def own_shard(self, source: str) -> tuple[int, int]:
        """`(node_split_id, num_nodes)` of a node that reads its own JSON `source`. Without
        either key the node uses its whole corpus (shard 0 of 1); a shard of several needs both."""
        if self.node_split_id is None and (self.num_nodes or 1) > 1:
            raise ConfigError(f"{source}: 'node_split_id' is missing: with 'num_nodes' "
                              f"{self.num_nodes} the node must say which shard "
                              f"(0..{self.num_nodes - 1}) is its own")
        if self.node_split_id is not None and self.num_nodes is None:
            raise ConfigError(f"{source}: 'num_nodes' is missing: 'node_split_id' "
                              f"{self.node_split_id} is one shard of how many?")
        shard, shards = self.node_split_id or 0, self.num_nodes or 1
        if shard >= shards:
            raise ConfigError(f"{source}: 'node_split_id' ({shard}) must be below 'num_nodes' "
                              f"({shards})")
        return shard, shards


@dataclass
class Config:
    """One experiment file; each field is a section."""

    experiment: ExperimentConfig = field(default_factory=ExperimentConfig, metadata=rule(
        "name, seed, output folder, device, precision of the frozen encoders, cache folder"))
    federation: FederationConfig = field(default_factory=FederationConfig, metadata=rule(
        "rounds, nodes, local epochs, sampling, quorum and timeouts, transport dtype, Flower "
        "strategy, baselines, overlap check"))
    training: TrainingConfig = field(default_factory=TrainingConfig, metadata=rule(
        "batch size, optimizer, learning rate and weight decay (the adapters' fallback), "
        "gradient accumulation"))
    dataset: DatasetConfig = field(default_factory=DatasetConfig, metadata=rule(
        "which corpus, where, how it is split over nodes and into train / val / test, prompt "
        "template"))
    feda2v: FedA2VConfig = field(default_factory=FedA2VConfig, metadata=rule(
        "the models (audio encoder, CLIP, T5), diffusion type, adapter shapes and learning "
        "rates, batching and loss, checkpoints, images rendered on the nodes"))
    wandb: WandbConfig = field(default_factory=WandbConfig, metadata=rule(
        "Weights & Biases logging beside TensorBoard"))
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig, metadata=rule(
        "central differential privacy at node level: nodes clip their adapter updates, the "
        "server adds Gaussian noise to their mean, an RDP accountant gives (ε, δ)"))
    nodes: dict[str, NodeConfig] = field(default_factory=dict, metadata=rule(
        "each node's own settings by node id (in simulation the partition id: \"0\", \"1\", "
        "...); an entry has the shape of a node's own JSON file and its keys win over the "
        "experiment's for that node"))

    def to_dict(self) -> dict[str, Any]:
        """The resolved config in FedA2V's own format. `federation.algorithm` is left out: in a
        file it marks upstream's format (docs/upstream-config.md), and there is one value."""
        data = dataclasses.asdict(self)
        del data["federation"]["algorithm"]
        return data

    def dataset_path(self) -> str:
        """`dataset.path`; unset for a built-in corpus, `data/<name>-<its settings>`, so
        configs with other generation settings never meet in one folder."""
        ds = self.dataset
        if ds.path or ds.name not in BUILTIN_DATASETS:
            return ds.path
        return (f"data/{ds.name}-seed{self.experiment.seed}-{ds.num_classes}x"
                f"{ds.clips_per_class}-{ds.clip_seconds:g}s-{ds.sample_rate}hz")

    def make_paths_absolute(self) -> None:
        """Resolve the output, dataset, adapter and generator checkpoint paths against this
        process's working directory, so processes started elsewhere (nodes, the ServerApp)
        read the same places."""
        self.experiment.output_dir = str(Path(self.experiment.output_dir).resolve())
        self.feda2v.adapter_checkpoint_dir = str(Path(self.feda2v.adapter_checkpoint_dir)
                                                 .expanduser().resolve())
        self.feda2v.generator_checkpoint_dir = str(Path(self.feda2v.generator_checkpoint_dir)
                                                   .expanduser().resolve())
        if self.feda2v.images_output_dir:
            self.feda2v.images_output_dir = str(Path(self.feda2v.images_output_dir)
                                                .expanduser().resolve())
        if self.dataset_path():
            self.dataset.path = str(Path(self.dataset_path()).resolve())
        self.dataset.paths = {k: str(Path(v).resolve()) for k, v in self.dataset.paths.items()}

    def node(self, partition_id: int) -> NodeConfig:
        """The `nodes` entry of a simulated node, or an empty one."""
        return self.nodes.get(str(partition_id), NodeConfig())

    def for_node(self, node: NodeConfig, key: str) -> Any:
        """A node's own value of `key`, else the experiment's (`dataset` or `feda2v`)."""
        value = getattr(node, key)
        if value is not None:
            return value
        section = self.dataset if hasattr(self.dataset, key) else self.feda2v
        return getattr(section, key)

    def adapter_lr(self, adapter: str) -> float:
        value = getattr(self.feda2v, f"{adapter}_adapter_learning_rate")
        return self.training.learning_rate if value is None else value

    def adapter_weight_decay(self, adapter: str) -> float:
        value = getattr(self.feda2v, f"{adapter}_adapter_weight_decay")
        return self.training.weight_decay if value is None else value

    def adapter_schedule(self, adapter: str) -> str:
        value = getattr(self.feda2v, f"{adapter}_adapter_learning_rate_schedule")
        if isinstance(value, bool):
            return "cosine" if value else "constant"
        return value
