"""The experiment's JSON config: schema, defaults, loading and validation.

One experiment file has the sections `experiment`, `federation`, `training`, `dataset`, `feda2v`,
`privacy`, `wandb` and `nodes`; a node's own JSON file has the shape of one `nodes` entry. Every
section and key is optional and falls back to its default. Unknown keys and bad values raise
`ConfigError` naming the file, the key path and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message says where and why."""


def suggest(name: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _rule(**kw: Any) -> dict[str, Any]:
    return {"rule": kw}


DEVICE_PATTERN = r"cpu|auto|cuda(:[0-9]+)?"
# Corpora generated on first use (fed_a2v.data.node_corpora); the others are read from disk.
# federation.transport_dtype: how adapters travel back to the server (fed_a2v.federation.transport)
TRANSPORT_DTYPES = ("fp32", "fp16", "bf16", "int8")
# Their classes: fed_a2v.data.node_corpora checks that its generators agree.
BUILTIN_CLASSES = {"synthetic": 12, "speech": 20, "instruments": 16}
BUILTIN_DATASETS = tuple(BUILTIN_CLASSES)
# Corpus kinds; upstream spells them ESC50, VEGAS, VGGSound, MIXED (read case-insensitively).
DATASETS = (*BUILTIN_DATASETS, "esc50", "csv", "vegas", "vggsound")
DIFFUSION_TYPES = ("flux", "sd")
AGGREGATION_MODES = ("weighted_average", "avg", "none")
ADAPTER_DESIGNS = ("fed_a2v", "upstream")
# Flower's strategies FedA2V runs (fed_a2v.federation.strategies)
STRATEGY_NAMES = ("FedAvg", "FedProx", "FedAvgM", "FedAdam", "FedYogi", "FedAdagrad",
                  "FedTrimmedAvg", "FedMedian", "Krum", "MultiKrum", "Bulyan")
PRIVACY_MECHANISMS = ("none", "client_fixed_clipping", "client_adaptive_clipping")


@dataclass
class ExperimentConfig:
    name: str = "feda2v"
    seed: int = 0
    output_dir: str = "runs"
    device: str = field(default="cpu", metadata=_rule(pattern=DEVICE_PATTERN,
                                                          shown="cpu, auto, cuda, cuda:N"))
    # Precision of the frozen encoders (the adapters always train in fp32).
    dtype: str = field(default="fp32", metadata=_rule(choices=("fp32", "fp16", "bf16")))
    # Encoded audio tokens and text targets; "" means $FEDA2V_CACHE_DIR or ~/.cache/fed_a2v.
    cache_dir: str = ""


@dataclass
class FederationConfig:
    # The only algorithm FedA2V runs; upstream configs name it.
    algorithm: str = field(default="FedA2V", metadata=_rule(choices=("FedA2V",)))
    global_rounds: int = field(default=5, metadata=_rule(min=1))
    # None: the number of `nodes` entries (3 without any).
    num_clients: int | None = field(default=None, metadata=_rule(min=1))
    local_epochs: int = field(default=2, metadata=_rule(min=1))
    join_ratio: float = field(default=1.0, metadata=_rule(min_exclusive=0.0, max=1.0))
    # None: 2, or fewer where the federation has fewer nodes.
    min_clients: int | None = field(default=None, metadata=_rule(min=1))
    # Nodes evaluate the global adapters every `eval_gap` rounds (and after the last round).
    eval_gap: int = field(default=1, metadata=_rule(min=1))
    # A node's update is dropped for the round if an adapter moved further than this (L2).
    max_update_norm: float | None = field(default=None, metadata=_rule(min_exclusive=0.0))
    # Seconds a round waits for replies; the replies in by then are aggregated. None: an hour
    # for the first round, then 4x the slowest round so far, at least 5 minutes.
    round_timeout: float | None = field(default=None, metadata=_rule(min_exclusive=0.0))
    # Nodes may share clips (train-train, or one's held-out clip in another's training set).
    allow_overlap: bool = False
    # How nodes send their adapters back: fp32, fp16 / bf16 (half the bytes) or int8 (deltas
    # against the round's global adapters, per-tensor scaled: a quarter). See fed_a2v.federation.transport.
    transport_dtype: str = field(default="fp32", metadata=_rule(choices=TRANSPORT_DTYPES))
    # Flower's strategy that makes the global adapters from the round's updates, and its own
    # keyword arguments, e.g. {"proximal_mu": 0.01} (fed_a2v.federation.strategies).
    strategy: str = field(default="FedAvg", metadata=_rule(choices=STRATEGY_NAMES))
    strategy_options: dict[str, float | int] = field(default_factory=dict)
    # Ridge baselines in summary.json and report.md (fed_a2v.federation.baselines): each node sends, once,
    # XᵀX and per-target-row sums of its training clips' pooled tokens and its clip count per
    # row (so the class means of its features). false: nothing besides the adapters is sent.
    baselines: bool = True
    # The ridge's λ, relative to the mean diagonal of XᵀX.
    baseline_ridge_lambda: float = field(default=1e-3, metadata=_rule(min_exclusive=0.0))


@dataclass
class TrainingConfig:
    batch_size: int = field(default=16, metadata=_rule(min=1))
    optimizer: str = field(default="AdamW", metadata=_rule(choices=("AdamW",)))
    learning_rate: float = field(default=1e-3, metadata=_rule(min_exclusive=0.0))
    weight_decay: float = field(default=1e-4, metadata=_rule(min=0.0))
    gradient_accumulation_steps: int = field(default=1, metadata=_rule(min=1))
    eval_batch_size: int = field(default=64, metadata=_rule(min=1))


@dataclass
class DatasetConfig:
    # mixed: nodes name their own corpus (`nodes.*.dataset`), each found in `paths`.
    name: str = field(default="synthetic", metadata=_rule(choices=(*DATASETS, "mixed")))
    # built-in/esc50: a folder with meta/esc50.csv and audio/; csv: a manifest file, or a
    # folder holding manifest.csv (columns path,label and optional caption, split, fold);
    # vegas/vggsound: the folder layouts of docs/upstream-config.md.
    # Empty: the built-in corpus goes to a folder named by its settings (`Config.dataset_path`).
    path: str = ""
    # Where each kind of corpus is, by dataset name, for federations that mix them.
    paths: dict[str, str] = field(default_factory=dict)
    # nodes: each node's classes come from its `nodes` entry, its clips from a stratified shard;
    # dirichlet: shards draw each class's clips in Dirichlet(dirichlet_alpha) proportions;
    # classes (upstream's way): a node holds every clip of its classes, cut only by its own
    # node_split_id / num_nodes / samples_per_node.
    partition: str = field(default="nodes",
                           metadata=_rule(choices=("nodes", "dirichlet", "classes")))
    dirichlet_alpha: float = field(default=0.5, metadata=_rule(min_exclusive=0.0))
    prompt_template: str = "{label}"
    # true: train/val/test by folds (numbered as in the corpus: ESC-50's CSV counts 1-5);
    # false: by ratios, per node, seeded by node_split_seed; None: by folds where the corpus
    # has them (ESC-50, manifests), else by ratios (VEGAS).
    use_folds: bool | None = None
    train_folds: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    val_folds: list[int] | None = None  # None: val_ratio of the training folds (0: no val)
    test_folds: list[int] = field(default_factory=lambda: [5])
    train_ratio: float = field(default=0.8, metadata=_rule(min=0.0, max=1.0))
    # None: 0.1 with ratio splits, 0 with fold splits.
    val_ratio: float | None = field(default=None, metadata=_rule(min=0.0, max=1.0))
    # None: what train_ratio and val_ratio leave (1 - train - val), as upstream computed it.
    test_ratio: float | None = field(default=None, metadata=_rule(min=0.0, max=1.0))
    stratify: bool = True
    node_split_seed: int = 42
    num_samples_per_class: int | None = field(default=None, metadata=_rule(min=1))
    clip_seconds: float = field(default=5.0, metadata=_rule(min_exclusive=0.0))
    # Only for the built-in corpora: what the generator writes on first use. num_classes is
    # at most the corpus's own (synthetic 12, speech 20, instruments 16).
    num_classes: int = field(default=10, metadata=_rule(min=2))
    clips_per_class: int = field(default=40, metadata=_rule(min=5))
    sample_rate: int = field(default=22050, metadata=_rule(min=8000))


@dataclass
class FedA2VConfig:
    # flux: CLIP pooled (768) + T5 sequence targets; sd: the CLIP text encoder's token sequence
    # (clip_max_length x 768), one adapter, as Stable Diffusion is conditioned.
    diffusion_type: str = field(default="flux", metadata=_rule(choices=DIFFUSION_TYPES))
    clip_max_length: int = field(default=77, metadata=_rule(min=1))
    # The adapters see only the AST's first (CLS) token.
    use_cls_token_only: bool = False
    # weighted_average: FedAvg by examples; avg: unweighted mean; none: standalone nodes (each
    # trains alone, nothing is exchanged after the first message).
    adapter_aggregation_mode: str = field(default="weighted_average",
                                          metadata=_rule(choices=AGGREGATION_MODES))
    # Adapters saved every `adapter_checkpoint_frequency` rounds (and at the end) under
    # <adapter_checkpoint_dir>/<adapter_checkpoint_base_name>_round<N>.safetensors (per adapter
    # with adapter_checkpoint_per_type); with adapter_load_checkpoint the run starts from the
    # latest one there.
    adapter_checkpoint_dir: str = "checkpoints/adapters"
    adapter_checkpoint_base_name: str = "adapter"
    adapter_save_checkpoint: bool = False
    adapter_load_checkpoint: bool = False
    adapter_checkpoint_frequency: int = field(default=5, metadata=_rule(min=1))
    adapter_checkpoint_per_type: bool = True
    audio_model_name: str = "builtin:tiny-ast"
    clip_model_name: str = "builtin:tiny-clip"
    t5_model_name: str = "builtin:tiny-t5"
    # FLUX-style repositories keep text encoders in subfolders (text_encoder, text_encoder_2);
    # a tokenizer subfolder defaults to the FLUX convention (tokenizer, tokenizer_2).
    clip_model_subfolder: str | None = None
    t5_model_subfolder: str | None = None
    clip_tokenizer_subfolder: str | None = None
    t5_tokenizer_subfolder: str | None = None
    # A file written by `fed-a2v targets`: the server then loads no text encoder.
    targets_file: str | None = None
    t5_max_length: int = field(default=17, metadata=_rule(min=1))
    clip_adapter_learning_rate: float | None = field(
        default=None, metadata=_rule(min_exclusive=0.0)
    )
    clip_adapter_weight_decay: float | None = field(default=None, metadata=_rule(min=0.0))
    clip_adapter_learning_rate_schedule: bool | str = field(
        default=False, metadata=_rule(choices=(True, False, "constant", "cosine"))
    )
    t5_adapter_learning_rate: float | None = field(default=None, metadata=_rule(min_exclusive=0.0))
    t5_adapter_weight_decay: float | None = field(default=None, metadata=_rule(min=0.0))
    t5_adapter_learning_rate_schedule: bool | str = field(
        default=False, metadata=_rule(choices=(True, False, "constant", "cosine"))
    )
    lr_warmup_rounds: int = field(default=1, metadata=_rule(min=0))
    lr_min_ratio: float = field(default=0.1, metadata=_rule(min=0.0, max=1.0))
    use_stratified_batching: bool = False
    use_per_class_loss: bool = False
    # Adds weight x the cross-entropy of each prediction's cosine similarities to every target
    # row against its own (fed_a2v.model.losses.retrieval_loss); 0: MSE alone, as upstream.
    retrieval_loss_weight: float = field(default=0.0, metadata=_rule(min=0.0))
    retrieval_temperature: float = field(default=0.1, metadata=_rule(min_exclusive=0.0))
    adapter_dropout: float = field(default=0.05, metadata=_rule(min=0.0, max=0.9))
    adapter_hidden_dim: int = field(default=512, metadata=_rule(min=1))
    adapter_num_heads: int = field(default=4, metadata=_rule(min=1))
    adapter_mlp_ratio: int = field(default=2, metadata=_rule(min=1))
    adapter_norm_groups: int = field(default=8, metadata=_rule(min=1))
    # fed_a2v: pool at the audio width, then project up (fed_a2v.model.adapters); upstream: the
    # upstream research code's adapters, pooling at the target width, to compare against.
    adapter_design: str = field(default="fed_a2v", metadata=_rule(choices=ADAPTER_DESIGNS))
    # Every N rounds (0: never) each node renders its first `generate_images_per_node` held-out
    # clips with the global adapters, on the node (`fed_a2v.generate.node_images`); those rounds are
    # evaluation rounds too, whatever `eval_gap` says.
    generate_nodes_images_frequency: int = field(default=0, metadata=_rule(min=0))
    generate_images_per_node: int = field(default=4, metadata=_rule(min=1))
    # The FLUX pipeline (hub id, local FLUX-layout folder or builtin:tiny-flux); a node's own
    # `pipeline` wins. "": builtin:tiny-flux with builtin text models, else the FLUX repository
    # the T5 targets came from (black-forest-labs/FLUX.1-schnell when T5 is not in one).
    generation_pipeline: str = ""
    # As upstream rendered with FLUX.1-schnell: one step, no guidance.
    generation_steps: int = field(default=1, metadata=_rule(min=1))
    generation_size: int = field(default=512, metadata=_rule(min=16))
    generation_guidance: float = field(default=0.0, metadata=_rule(min=0.0))
    # Where nodes write their images: <dir>/<run id>/<node>/round_<r>/<clip stem>.png; a node's
    # own `images_dir` wins. "": <the node's cache folder>/images.
    images_output_dir: str = ""


@dataclass
class WandbConfig:
    """Weights & Biases logging beside TensorBoard (`pip install fed-a2v[wandb]`)."""

    disabled: bool = True
    project: str = "fed-a2v"
    entity: str | None = None
    # None: wandb's own default (or $WANDB_MODE).
    mode: str | None = field(default=None, metadata=_rule(choices=("online", "offline",
                                                                     "disabled")))


@dataclass
class PrivacyConfig:
    """Central differential privacy at node level (fed_a2v.federation.privacy): every node clips its
    adapter update (all adapters together, L2) with Flower's ClientApp mod, the server adds
    Gaussian noise to the mean of the clipped updates, and an RDP accountant gives ε."""

    mechanism: str = field(default="none", metadata=_rule(choices=PRIVACY_MECHANISMS))
    # Noise stdev over clipping_norm, on the sum of the round's updates (0: clipping only,
    # no guarantee: ε is infinite).
    noise_multiplier: float = field(default=1.0, metadata=_rule(min=0.0))
    # L2 bound of one node's update; for adaptive clipping, the first round's bound.
    clipping_norm: float = field(default=1.0, metadata=_rule(min_exclusive=0.0))
    # Adaptive clipping (Andrew et al. 2019), as Flower names and defaults them: the bound
    # follows the target quantile of the nodes' update norms, at geometric rate clip_norm_lr;
    # the count of clipped updates is noised with clipped_count_stddev (null: sampled / 20).
    target_clipped_quantile: float = field(default=0.5, metadata=_rule(min=0.0, max=1.0))
    clip_norm_lr: float = field(default=0.2, metadata=_rule(min_exclusive=0.0))
    clipped_count_stddev: float | None = field(default=None, metadata=_rule(min_exclusive=0.0))
    # The δ of the reported (ε, δ); below 1 / federation.num_clients.
    delta: float = field(default=1e-5, metadata=_rule(min_exclusive=0.0))


@dataclass
class NodeConfig:
    """One node's own settings: which data it holds and how it runs. Unset keys take the
    experiment's (`dataset`, `feda2v`) value."""

    dataset: str | None = field(default=None, metadata=_rule(choices=DATASETS))
    selected_classes: list[str] | None = None
    excluded_classes: list[str] | None = None
    # true/false: fold or ratio splits; a list: fold splits using only these folds.
    use_folds: bool | list[int] | None = None
    train_folds: list[int] | None = None
    val_folds: list[int] | None = None
    test_folds: list[int] | None = None
    train_ratio: float | None = field(default=None, metadata=_rule(min=0.0, max=1.0))
    val_ratio: float | None = field(default=None, metadata=_rule(min=0.0, max=1.0))
    test_ratio: float | None = field(default=None, metadata=_rule(min=0.0, max=1.0))
    stratify: bool | None = None
    num_samples_per_class: int | None = field(default=None, metadata=_rule(min=1))
    samples_per_node: int | None = field(default=None, metadata=_rule(min=1))
    node_split_seed: int | None = None
    node_split_id: int | None = field(default=None, metadata=_rule(min=0))
    num_nodes: int | None = field(default=None, metadata=_rule(min=1))
    diffusion_type: str | None = field(default=None, metadata=_rule(choices=DIFFUSION_TYPES))
    use_cls_token_only: bool | None = None
    dataset_path: str | None = None
    cache_dir: str | None = None
    device: str | None = field(default=None, metadata=_rule(pattern=DEVICE_PATTERN,
                                                             shown="cpu, auto, cuda, cuda:N"))
    batch_size: int | None = field(default=None, metadata=_rule(min=1))
    # Image rendering on this node (`feda2v.generate_nodes_images_frequency`): its FLUX pipeline
    # and its own image folder (<images_dir>/<run id>/round_<r>/<clip stem>.png).
    pipeline: str | None = None
    images_dir: str | None = None

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
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    feda2v: FedA2VConfig = field(default_factory=FedA2VConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    nodes: dict[str, NodeConfig] = field(default_factory=dict)

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
        """Resolve the output, dataset and adapter checkpoint paths against this process's
        working directory, so processes started elsewhere (nodes, the ServerApp) read the
        same places."""
        self.experiment.output_dir = str(Path(self.experiment.output_dir).resolve())
        self.feda2v.adapter_checkpoint_dir = str(Path(self.feda2v.adapter_checkpoint_dir)
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
