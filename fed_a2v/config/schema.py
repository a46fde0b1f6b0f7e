"""The experiment's JSON config: schema, defaults, loading and validation.

One experiment file has the sections `experiment`, `federation`, `training`, `dataset`, `feda2v`,
`privacy`, `wandb` and `nodes`; a node's own JSON file has the shape of one `nodes` entry. Every
section and key is optional and falls back to its default. Unknown keys and bad values raise
`ConfigError` naming the file, the key path and what is allowed. Each field's metadata holds its
meaning (`doc`), from which fed_a2v.config.reference writes docs/configuration.md and the JSON
Schemas.
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


def _rule(doc: str, *, shown_default: str | None = None, keys: tuple[str, ...] | None = None,
          **rule: Any) -> dict[str, Any]:
    """A field's metadata. `doc`: its meaning (docs/configuration.md, the JSON Schemas);
    `shown_default`: how the reference shows a default that is None in the dataclass and worked
    out when the config loads; `keys`: the keys a mapping may have (fed_a2v.config.validate
    checks them); `rule`: what fed_a2v.config.parse checks of a value (choices, min, max,
    min_exclusive, pattern with `shown`, the pattern in words)."""
    meta: dict[str, Any] = {"doc": doc, "rule": rule}
    if shown_default is not None:
        meta["shown_default"] = shown_default
    if keys is not None:
        meta["keys"] = keys
    return meta


# A config file's pointer to its JSON Schema (docs/experiment.schema.json, node.schema.json), for
# editors; the loader ignores it at the top of an experiment or node file.
SCHEMA_KEY = "$schema"
DEVICE_PATTERN = r"cpu|auto|cuda(:[0-9]+)?"
# Corpora generated on first use (fed_a2v.data.node_corpora); the others are read from disk.
# federation.transport_dtype: how adapters travel back to the server (fed_a2v.federation.transport)
TRANSPORT_DTYPES = ("fp32", "fp16", "bf16", "int8")
# federation.round_protocol: message stages per round (fed_a2v.federation.feda2v_strategy)
ROUND_PROTOCOLS = ("one_stage", "two_stage")
# Their classes: fed_a2v.data.node_corpora checks that its generators agree.
BUILTIN_CLASSES = {"synthetic": 12, "speech": 20, "instruments": 16, "italian_speech": 12,
                   "german_speech": 12, "spanish_speech": 12}
BUILTIN_DATASETS = tuple(BUILTIN_CLASSES)
# Corpus kinds; upstream spells them ESC50, VEGAS, VGGSound, MIXED (read case-insensitively).
DATASETS = (*BUILTIN_DATASETS, "esc50", "csv", "vegas", "vggsound", "folders")
DIFFUSION_TYPES = ("flux", "sd")
AGGREGATION_MODES = ("weighted_average", "avg", "none", "kd")
GENERATOR_KINDS = ("gaussian", "replay", "noise")  # fed_a2v.model.generators
GENERATOR_GRANULARITIES = ("per_class", "unified", "per_group")
KD_TEACHERS = ("class_holders", "all_nodes")
ADAPTER_DESIGNS = ("fed_a2v", "upstream")
# Flower's strategies FedA2V runs (fed_a2v.federation.flower_strategies)
STRATEGY_NAMES = ("FedAvg", "FedProx", "FedAvgM", "FedAdam", "FedYogi", "FedAdagrad",
                  "FedTrimmedAvg", "FedMedian", "Krum", "MultiKrum", "Bulyan")
PRIVACY_MECHANISMS = ("none", "client_fixed_clipping", "client_adaptive_clipping")
SCHEDULES = (True, False, "constant", "cosine")


@dataclass
class ExperimentConfig:
    name: str = field(default="feda2v", metadata=_rule("run directory prefix"))
    seed: int = field(default=0, metadata=_rule(
        "seeds data generation, splits, adapter initialisation and batching"))
    output_dir: str = field(default="runs", metadata=_rule("where run directories go"))
    device: str = field(default="cpu", metadata=_rule(
        "where the encoders and adapters run: `cpu`, `cuda` (the first GPU), `cuda:N` or `auto` "
        "(a GPU when there is one); a node's own `device` wins",
        pattern=DEVICE_PATTERN, shown="cpu, auto, cuda, cuda:N"))
    dtype: str = field(default="fp32", metadata=_rule(
        "precision of the frozen encoders (the adapters always train in fp32)",
        choices=("fp32", "fp16", "bf16")))
    cache_dir: str = field(default="", metadata=_rule(
        "the encoded audio tokens and text targets; empty: `$FEDA2V_CACHE_DIR`, else "
        "`~/.cache/fed_a2v`; a node's own `cache_dir` wins"))


@dataclass
class FederationConfig:
    algorithm: str = field(default="FedA2V", metadata=_rule(
        "upstream's name of the algorithm: a file that has this key is read in upstream's format "
        "(docs/upstream-config.md); FedA2V's own files leave it out",
        choices=("FedA2V",)))
    global_rounds: int = field(default=5, metadata=_rule("federated rounds", min=1))
    num_clients: int | None = field(default=None, metadata=_rule(
        "simulated nodes (`simulate --num-nodes` overrides it)",
        shown_default="the number of `nodes` entries (3 without any)", min=1))
    local_epochs: int = field(default=2, metadata=_rule("epochs per round on each node", min=1))
    join_ratio: float = field(default=1.0, metadata=_rule(
        "fraction of the nodes sampled for training each round", min_exclusive=0.0, max=1.0))
    min_clients: int | None = field(default=None, metadata=_rule(
        "usable updates a round needs to change the adapters; a round is sent only when this "
        "many nodes are connected (it waits at most `quorum_timeout`)",
        shown_default="2 (fewer nodes: all)", min=1))
    eval_gap: int = field(default=1, metadata=_rule(
        "nodes evaluate the global adapters after every `eval_gap`-th round and after the last",
        min=1))
    max_update_norm: float | None = field(default=None, metadata=_rule(
        "a node's update is dropped for the round if an adapter moved further than this (L2)",
        shown_default="none: no limit", min_exclusive=0.0))
    round_protocol: str = field(default="one_stage", metadata=_rule(
        "message stages per round (docs/rounds.md): `one_stage`, the nodes evaluate the global "
        "adapters they receive at the start of the next round's train message and reply with "
        "that evaluation beside their update (the last round has an evaluate stage of its own); "
        "`two_stage`, a train stage then an evaluate stage every round (Flower's `start`)",
        choices=ROUND_PROTOCOLS))
    quorum_timeout: float | None = field(default=None, metadata=_rule(
        "seconds a round waits for `min_clients` connected nodes before the run stops, failed, "
        "after its last checkpoint (`--resume` goes on once the nodes are back); a round that "
        "got fewer than `min_clients` usable updates is run again once they are connected",
        shown_default="the round timeout (an hour before the first round, then 4x the slowest "
                      "round so far, at least 300 s)",
        min_exclusive=0.0))
    round_timeout: float | None = field(default=None, metadata=_rule(
        "seconds a round waits for the nodes' replies; the replies in by then are aggregated (a "
        "dead node is not waited for)",
        shown_default="an hour for the first round, then 4x the slowest round so far, at least "
                      "300 s",
        min_exclusive=0.0))
    allow_overlap: bool = field(default=False, metadata=_rule(
        "nodes may share clips; otherwise a clip two nodes train on, or one node's held-out clip "
        "in another's training set, is an error (`validate`/`simulate` before the run, the "
        "server from salted content digests the nodes send once; no audio leaves a node)"))
    transport_dtype: str = field(default="fp32", metadata=_rule(
        "how nodes send their adapters back (fed_a2v.federation.transport): `fp32`; `fp16` or "
        "`bf16` (half the bytes); `int8` (a quarter: each tensor's change from the round's "
        "global adapters, scaled by its largest value / 127). The server averages in float64 "
        "whatever the dtype; the global adapters go to the nodes in fp32",
        choices=TRANSPORT_DTYPES))
    strategy: str = field(default="FedAvg", metadata=_rule(
        "Flower's strategy that makes the global adapters from a round's updates "
        "(fed_a2v.federation.flower_strategies; configuration-guide.md, Strategies)",
        choices=STRATEGY_NAMES))
    strategy_options: dict[str, float | int] = field(default_factory=dict, metadata=_rule(
        "the strategy class's own keyword arguments, e.g. `{\"proximal_mu\": 0.01}`, "
        "`{\"eta\": 0.01}`, `{\"num_malicious_nodes\": 1}`; an unknown one is an error that lists "
        "the class's options"))
    baselines: bool = field(default=True, metadata=_rule(
        "ridge baselines beside FedA2V in `summary.json` and `report.md` "
        "(fed_a2v.federation.baselines): each node sends, once, XᵀX and per-target-row sums of "
        "its training clips' pooled tokens and its clip count per row (so the class means of "
        "its features); `false`: nothing besides the adapters is sent"))
    baseline_ridge_lambda: float = field(default=1e-3, metadata=_rule(
        "the baselines' ridge λ, relative to the mean diagonal of XᵀX", min_exclusive=0.0))


@dataclass
class TrainingConfig:
    batch_size: int = field(default=16, metadata=_rule(
        "local batch size; a node's own `batch_size` wins", min=1))
    optimizer: str = field(default="AdamW", metadata=_rule(
        "one AdamW per adapter", choices=("AdamW",)))
    learning_rate: float = field(default=3e-3, metadata=_rule(
        "learning rate of an adapter without its own (`feda2v.{clip,t5}_adapter_learning_rate`)"
        "; 3e-3 since the default recipe of docs/corpora.md (1e-3 before, upstream's)",
        min_exclusive=0.0))
    weight_decay: float = field(default=1e-4, metadata=_rule(
        "weight decay of an adapter without its own (`feda2v.{clip,t5}_adapter_weight_decay`)",
        min=0.0))
    gradient_accumulation_steps: int = field(default=1, metadata=_rule(
        "batches per optimizer step", min=1))
    eval_batch_size: int = field(default=64, metadata=_rule(
        "held-out evaluation batch size", min=1))


@dataclass
class DatasetConfig:
    name: str = field(default="synthetic", metadata=_rule(
        "the corpus kind: `synthetic`, `speech`, `instruments`, `italian_speech`, "
        "`german_speech`, `spanish_speech` (built-in, generated on first use); `esc50` (an "
        "ESC-50 layout folder, official or upstream's); `csv` (a manifest); "
        "`folders` (class folders, `<class>/*.wav`); `vegas`, `vggsound` (their layouts: "
        "docs/upstream-config.md); `mixed`: each node names its own (`nodes.*.dataset`), each "
        "found in `paths`",
        choices=(*DATASETS, "mixed")))
    path: str = field(default="", metadata=_rule(
        "the corpus: built-in and `esc50`, a folder with `meta/esc50.csv` and `audio/`; `csv`, a "
        "manifest file, or a folder holding `manifest.csv` (columns `path,label` and optional "
        "`caption`, `split`, `fold`; audio paths relative to the manifest); `folders`, a folder "
        "of class folders holding `.wav`, `.flac`, `.ogg` or `.mp3` files; `vegas`/`vggsound`, "
        "the folder layouts of docs/upstream-config.md. Every real corpus needs it; empty, a "
        "built-in corpus gets one folder per generation settings (`Config.dataset_path`); a "
        "node's own `dataset_path` wins",
        shown_default="`\"\"`; built-in: `data/<name>-seed<S>-<classes>x<clips>-<sec>s-<rate>hz`"))
    paths: dict[str, str] = field(default_factory=dict, metadata=_rule(
        "where each kind of corpus is, by dataset name, for federations that mix them, e.g. "
        "`{\"esc50\": \"/data/ESC-50\", \"vegas\": \"/data/VEGAS\"}`",
        keys=DATASETS))
    partition: str = field(default="nodes", metadata=_rule(
        "`nodes`: each node's classes come from its `nodes` entry, its clips from a stratified "
        "shard; `dirichlet`: shards draw each class's clips in Dirichlet(`dirichlet_alpha`) "
        "proportions; `classes` (upstream's way): a node holds every clip of its classes, cut "
        "only by its own `node_split_id` / `num_nodes` / `samples_per_node`",
        choices=("nodes", "dirichlet", "classes")))
    dirichlet_alpha: float = field(default=0.5, metadata=_rule(
        "the Dirichlet concentration of `partition` `dirichlet`: smaller is more skewed",
        min_exclusive=0.0))
    prompt_template: str = field(default="{label}", metadata=_rule(
        "the text a class's targets encode, e.g. `\"the sound of a {label}\"`; only `{label}` "
        "may be used; underscores in labels become spaces"))
    use_folds: bool | None = field(default=None, metadata=_rule(
        "`true`: train/val/test by folds (numbered as in the corpus: ESC-50's CSV counts 1-5); "
        "`false`: by ratios, per node, seeded by `node_split_seed`",
        shown_default="by folds where the corpus has them (ESC-50; manifests and class "
                      "folders, whose clips without a fold or split are dealt into folds 1-5 "
                      "per class, seeded by `experiment.seed`), else by ratios (VEGAS)"))
    train_folds: list[int] = field(default_factory=lambda: [1, 2, 3, 4], metadata=_rule(
        "fold splits: the folds for training"))
    val_folds: list[int] | None = field(default=None, metadata=_rule(
        "fold splits: the folds for validation",
        shown_default="none: `val_ratio` of the training folds (0: no val)"))
    test_folds: list[int] = field(default_factory=lambda: [5], metadata=_rule(
        "fold splits: the folds for held-out evaluation"))
    train_ratio: float = field(default=0.8, metadata=_rule(
        "ratio splits: the training share, per class when `stratify`", min=0.0, max=1.0))
    val_ratio: float | None = field(default=None, metadata=_rule(
        "ratio splits: the validation share; fold splits without `val_folds`: the share of the "
        "training folds held out for validation",
        shown_default="0.1 with ratio splits, 0 with fold splits", min=0.0, max=1.0))
    test_ratio: float | None = field(default=None, metadata=_rule(
        "ratio splits: the held-out share",
        shown_default="what `train_ratio` and `val_ratio` leave (1 - train - val), as upstream "
                      "computed it",
        min=0.0, max=1.0))
    stratify: bool = field(default=True, metadata=_rule(
        "ratio splits are made per class"))
    node_split_seed: int = field(default=42, metadata=_rule(
        "seeds the ratio splits (with the node's split id or index) and, with `partition` "
        "`classes`, the shuffle before a node's block is cut"))
    num_samples_per_class: int | None = field(default=None, metadata=_rule(
        "each node keeps at most the first N clips of each class",
        shown_default="none: every clip", min=1))
    clip_seconds: float = field(default=5.0, metadata=_rule(
        "clips are padded or trimmed to this length (seconds)", min_exclusive=0.0))
    num_classes: int = field(default=10, metadata=_rule(
        "built-in corpora only: the classes the generator writes on first use, at most the "
        "corpus's own (synthetic 12, speech 20, instruments 16, italian_speech, "
        "german_speech and spanish_speech 12)", min=2))
    clips_per_class: int = field(default=40, metadata=_rule(
        "built-in corpora only: the clips generated per class", min=5))
    sample_rate: int = field(default=22050, metadata=_rule(
        "built-in corpora only: the generated clips' sample rate (Hz)", min=8000))


@dataclass
class FedA2VConfig:
    diffusion_type: str = field(default="flux", metadata=_rule(
        "`flux`: a CLIP adapter to the pooled CLIP embedding (768) and a T5 adapter to the T5 "
        "sequence; `sd` (Stable Diffusion 1.x): one CLIP adapter to the CLIP text encoder's "
        "token sequence (`clip_max_length` x 768), no T5 encoder loaded. A node's own "
        "`diffusion_type` must equal it (sd and flux adapters cannot be averaged)",
        choices=DIFFUSION_TYPES))
    clip_max_length: int = field(default=77, metadata=_rule(
        "`sd`: prompt tokens, the CLIP adapter's latents", min=1))
    use_cls_token_only: bool = field(default=False, metadata=_rule(
        "the adapters see only the AST's first (CLS) token; a node's own key wins (the token "
        "cache keeps every token)"))
    adapter_aggregation_mode: str = field(default="weighted_average", metadata=_rule(
        "`weighted_average`: FedAvg by examples; `avg`: unweighted mean; `none`: standalone "
        "nodes (each trains alone, nothing is exchanged after the first message); `kd`: FedAvg, "
        "then distilled on samples of the nodes' per-class generators (see `kd_*`, "
        "`generator_*`)",
        choices=AGGREGATION_MODES))
    adapter_checkpoint_dir: str = field(default="checkpoints/adapters", metadata=_rule(
        "where the global adapters are saved (`adapter_save_checkpoint`) and loaded from "
        "(`adapter_load_checkpoint`); relative: to the working directory"))
    adapter_checkpoint_base_name: str = field(default="adapter", metadata=_rule(
        "the saved files' name prefix: `<base>_<adapter>_round<N>.safetensors` "
        "(`adapter_checkpoint_per_type`) or `<base>_round<N>.safetensors`"))
    adapter_save_checkpoint: bool = field(default=False, metadata=_rule(
        "save the global adapters every `adapter_checkpoint_frequency` rounds and after the "
        "last one"))
    adapter_load_checkpoint: bool = field(default=False, metadata=_rule(
        "start the run from the latest round saved in `adapter_checkpoint_dir` (not with "
        "`adapter_aggregation_mode` `none`)"))
    adapter_checkpoint_frequency: int = field(default=5, metadata=_rule(
        "rounds between saved adapters", min=1))
    adapter_checkpoint_per_type: bool = field(default=True, metadata=_rule(
        "one file per adapter; `false`: one file for both"))
    audio_model_name: str = field(default="builtin:tiny-ast", metadata=_rule(
        "the frozen audio encoder (AST): `builtin:tiny-ast`, a hub id or a local directory"))
    clip_model_name: str = field(default="builtin:tiny-clip", metadata=_rule(
        "the CLIP text model: `builtin:tiny-clip`, a hub id or a local directory"))
    t5_model_name: str = field(default="builtin:tiny-t5", metadata=_rule(
        "the T5 encoder: `builtin:tiny-t5`, a hub id or a local directory"))
    clip_model_subfolder: str | None = field(default=None, metadata=_rule(
        "the CLIP text model's subfolder, e.g. `text_encoder` in a FLUX-style repository",
        shown_default="none"))
    t5_model_subfolder: str | None = field(default=None, metadata=_rule(
        "the T5 encoder's subfolder, e.g. `text_encoder_2` in a FLUX-style repository",
        shown_default="none"))
    clip_tokenizer_subfolder: str | None = field(default=None, metadata=_rule(
        "the CLIP tokenizer's subfolder",
        shown_default="FLUX convention: `tokenizer` for `text_encoder`, else the model's "
                      "subfolder"))
    t5_tokenizer_subfolder: str | None = field(default=None, metadata=_rule(
        "the T5 tokenizer's subfolder",
        shown_default="FLUX convention: `tokenizer_2` for `text_encoder_2`, else the model's "
                      "subfolder"))
    targets_file: str | None = field(default=None, metadata=_rule(
        "targets written by `fed-a2v targets`: the server then loads no text encoder",
        shown_default="none"))
    t5_max_length: int = field(default=17, metadata=_rule(
        "T5 prompt tokens, the T5 adapter's latents", min=1))
    clip_adapter_learning_rate: float | None = field(default=None, metadata=_rule(
        "the CLIP adapter's learning rate", shown_default="`training.learning_rate`",
        min_exclusive=0.0))
    clip_adapter_weight_decay: float | None = field(default=None, metadata=_rule(
        "the CLIP adapter's weight decay", shown_default="`training.weight_decay`", min=0.0))
    clip_adapter_learning_rate_schedule: bool | str = field(default=False, metadata=_rule(
        "the CLIP adapter's schedule over rounds: `false`/`\"constant\"`, or "
        "`true`/`\"cosine\"` (warmup `lr_warmup_rounds`, then down to `lr_min_ratio`)",
        choices=SCHEDULES))
    t5_adapter_learning_rate: float | None = field(default=None, metadata=_rule(
        "the T5 adapter's learning rate", shown_default="`training.learning_rate`",
        min_exclusive=0.0))
    t5_adapter_weight_decay: float | None = field(default=None, metadata=_rule(
        "the T5 adapter's weight decay", shown_default="`training.weight_decay`", min=0.0))
    t5_adapter_learning_rate_schedule: bool | str = field(default=False, metadata=_rule(
        "the T5 adapter's schedule over rounds, as `clip_adapter_learning_rate_schedule`",
        choices=SCHEDULES))
    lr_warmup_rounds: int = field(default=1, metadata=_rule(
        "cosine schedule: rounds of linear warmup", min=0))
    lr_min_ratio: float = field(default=0.1, metadata=_rule(
        "cosine schedule: the last round's learning rate over the adapter's own", min=0.0,
        max=1.0))
    use_stratified_batching: bool = field(default=False, metadata=_rule(
        "every batch from one class; every clip once per epoch"))
    use_per_class_loss: bool = field(default=False, metadata=_rule(
        "the loss is the mean over the batch's classes of each class's mean MSE"))
    retrieval_loss_weight: float = field(default=0.1, metadata=_rule(
        "adds weight x the cross-entropy of each prediction's cosine similarities to every "
        "target row (over `retrieval_temperature`) against its own row "
        "(fed_a2v.model.losses.retrieval_loss); 0: MSE alone, as upstream and as before the "
        "default recipe of docs/corpora.md", min=0.0))
    retrieval_temperature: float = field(default=0.1, metadata=_rule(
        "the retrieval loss's temperature", min_exclusive=0.0))
    adapter_dropout: float = field(default=0.05, metadata=_rule(
        "the adapters' MLP dropout", min=0.0, max=0.9))
    adapter_hidden_dim: int = field(default=512, metadata=_rule(
        "adapter shape: hidden width", min=1))
    adapter_num_heads: int = field(default=4, metadata=_rule(
        "adapter shape: attention heads of the pooling", min=1))
    adapter_mlp_ratio: int = field(default=2, metadata=_rule(
        "adapter shape: MLP width over the hidden width", min=1))
    adapter_norm_groups: int = field(default=8, metadata=_rule(
        "adapter shape: GroupNorm groups", min=1))
    adapter_token_statistics: bool = field(default=True, metadata=_rule(
        "adapter shape: each adapter's MLP reads the tokens' mean, standard deviation, first "
        "and second token beside its pooled latents (attention pooling cannot compute their "
        "spread); false: the pooled latents alone, as before. `fed_a2v` adapters only"))
    span_adapters: list[str] = field(default_factory=lambda: ["t5"], metadata=_rule(
        "adapters (`clip`, `t5`) that predict the mean target row plus coordinates along the "
        "directions in which the rows differ (fed_a2v.model.target_span), their loss taken "
        "there; the others predict every value. `[]`: none, as before. `fed_a2v` adapters "
        "only", shown_default='`["t5"]`', items=("clip", "t5")))
    adapter_design: str = field(default="fed_a2v", metadata=_rule(
        "`fed_a2v`: pool at the audio width, then project up (fed_a2v.model.adapters); "
        "`upstream`: the upstream research code's adapters, pooling at the target width, to "
        "compare against",
        choices=ADAPTER_DESIGNS))
    generator_type: str = field(default="gaussian", metadata=_rule(
        "the nodes' per-class token-sequence generators (fed_a2v.model.generators): "
        "`gaussian`, a low-rank Gaussian per class; `replay`: the clips' tokens themselves (an "
        "oracle for studies: it sends the node's encoded data); `noise`: one class-blind "
        "Gaussian (a lower bound for studies)", choices=GENERATOR_KINDS))
    generator_granularity: str = field(default="per_class", metadata=_rule(
        "which classes share a generator's directions: `per_class` none, `unified` all of a "
        "node's, `per_group` those of one `generator_class_groups` group",
        choices=GENERATOR_GRANULARITIES))
    generator_class_groups: dict[str, list[str]] = field(default_factory=dict, metadata=_rule(
        "`per_group`: group name -> its classes; a class in no group is its own"))
    generator_rank: int = field(default=8, metadata=_rule(
        "directions a generator keeps (at most its clips minus one)", min=0))
    generator_training_mode: bool = field(default=False, metadata=_rule(
        "the nodes fit their generators and save them (`generator_checkpoint_dir`), and do "
        "not train adapters: upstream's first phase"))
    generator_checkpoint_dir: str = field(default="checkpoints/generators", metadata=_rule(
        "where nodes save their generators (`generator_save_checkpoint`, "
        "`generator_training_mode`) and the server loads them (`generator_load_checkpoint`); "
        "relative: to the working directory"))
    generator_checkpoint_base_name: str = field(default="generator", metadata=_rule(
        "the files' prefix, upstream's names: `<base>_node<id>_class_<c>_round_<r>.pt`"))
    generator_save_checkpoint: bool = field(default=False, metadata=_rule(
        "nodes save their generators when they fit them"))
    generator_load_checkpoint: bool = field(default=False, metadata=_rule(
        "the server starts from the generators saved in `generator_checkpoint_dir` (each "
        "node's latest round) instead of asking the nodes"))
    generator_validation_frequency: int = field(default=5, metadata=_rule(
        "every N rounds in which a node fits its generators, it reports how they do "
        "(`generator_own_top1`: how often its own adapters put a sample nearest its class; "
        "`generator_frechet`: the Fréchet distance between sampled and real mean-pooled "
        "tokens); 0: never", min=0))
    kd_training_epochs: int = field(default=5, metadata=_rule(
        "`kd`: the server's distillation epochs each round", min=1))
    kd_learning_rate: float = field(default=1e-3, metadata=_rule(
        "`kd`: the distillation's AdamW learning rate", min_exclusive=0.0))
    kd_samples_per_class: int = field(default=32, metadata=_rule(
        "`kd`: generated samples of each class the server distils on", min=1))
    kd_teacher: str = field(default="class_holders", metadata=_rule(
        "`kd`: a class's teacher is the example-weighted mean of the adapters of the nodes "
        "that hold it (`class_holders`), or of every node (`all_nodes`, as upstream)",
        choices=KD_TEACHERS))
    generate_nodes_images_frequency: int = field(default=0, metadata=_rule(
        "every N rounds (0: never) each node renders its first `generate_images_per_node` "
        "held-out clips with the global adapters, on the node (fed_a2v.generate.node_images); "
        "those rounds are evaluation rounds too, whatever `eval_gap` says. Needs "
        "`diffusion_type` `flux`", min=0))
    generate_images_per_node: int = field(default=4, metadata=_rule(
        "how many held-out clips a node renders (its first K, the same each round; clip i uses "
        "seed `experiment.seed + i`)", min=1))
    generation_pipeline: str = field(default="", metadata=_rule(
        "the FLUX pipeline (hub id, local FLUX-layout folder or `builtin:tiny-flux`); empty: "
        "`builtin:tiny-flux` with builtin text models, else the FLUX repository the T5 targets "
        "came from (`black-forest-labs/FLUX.1-schnell` when T5 is not in one). A node's own "
        "`pipeline` wins"))
    generation_steps: int = field(default=1, metadata=_rule(
        "denoising steps (one, as upstream rendered with FLUX.1-schnell)", min=1))
    generation_size: int = field(default=512, metadata=_rule(
        "image height = width in pixels (a multiple of 16 for FLUX.1, of 2 for "
        "`builtin:tiny-flux`)", min=16))
    generation_guidance: float = field(default=0.0, metadata=_rule(
        "guidance scale (none, as upstream rendered with FLUX.1-schnell)", min=0.0))
    images_output_dir: str = field(default="", metadata=_rule(
        "where nodes write their images: `<dir>/<run id>/<node>/round_<r>/<clip stem>.png`; "
        "empty: `<the node's cache folder>/images`; a node's own `images_dir` wins"))


@dataclass
class WandbConfig:
    """Weights & Biases logging beside TensorBoard (`pip install fed-a2v[wandb]`)."""

    disabled: bool = field(default=True, metadata=_rule(
        "`false`: log every series to a W&B run as well (`pip install 'fed-a2v[wandb]'`); "
        "TensorBoard is written either way (with the `plots` extra)"))
    project: str = field(default="fed-a2v", metadata=_rule("the W&B project"))
    entity: str | None = field(default=None, metadata=_rule(
        "the W&B entity (user or team)", shown_default="none: wandb's default"))
    mode: str | None = field(default=None, metadata=_rule(
        "how W&B logs: `online`, `offline` (to `<run dir>/wandb/`, for `wandb sync`) or "
        "`disabled`",
        shown_default="`$WANDB_MODE`, else wandb's own default",
        choices=("online", "offline", "disabled")))


@dataclass
class PrivacyConfig:
    """Central differential privacy at node level (fed_a2v.federation.privacy): every node clips its
    adapter update (all adapters together, L2) with Flower's ClientApp mod, the server adds
    Gaussian noise to the mean of the clipped updates, and an RDP accountant gives ε."""

    mechanism: str = field(default="none", metadata=_rule(
        "node-level differential privacy with Flower's wrappers: `client_fixed_clipping` or "
        "`client_adaptive_clipping`; needs `feda2v.adapter_aggregation_mode` `avg`, "
        "`federation.transport_dtype` `fp32`, `federation.baselines` `false` and "
        "`federation.strategy` `FedAvg` or `FedProx`",
        choices=PRIVACY_MECHANISMS))
    noise_multiplier: float = field(default=1.0, metadata=_rule(
        "σ: the noise's stdev on the sum of the round's clipped updates over `clipping_norm`; "
        "0: clipping only, no guarantee (ε is infinite)", min=0.0))
    clipping_norm: float = field(default=1.0, metadata=_rule(
        "L2 bound of one node's update (all adapters together); for adaptive clipping, the first "
        "round's bound", min_exclusive=0.0))
    target_clipped_quantile: float = field(default=0.5, metadata=_rule(
        "adaptive clipping (Andrew et al., Flower's name and default): the fraction of the "
        "nodes' updates the bound should clip", min=0.0, max=1.0))
    clip_norm_lr: float = field(default=0.2, metadata=_rule(
        "adaptive clipping: the bound's geometric step per round", min_exclusive=0.0))
    clipped_count_stddev: float | None = field(default=None, metadata=_rule(
        "adaptive clipping: the noise on the count of clipped updates; must exceed "
        "`noise_multiplier` / 2",
        shown_default="sampled nodes / 20", min_exclusive=0.0))
    delta: float = field(default=1e-5, metadata=_rule(
        "the δ of the reported (ε, δ); must be below 1 / `federation.num_clients`",
        min_exclusive=0.0))


@dataclass
class NodeConfig:
    """One node's own settings: which data it holds and how it runs. Unset keys take the
    experiment's (`dataset`, `feda2v`) value."""

    dataset: str | None = field(default=None, metadata=_rule(
        "this node's corpus kind; in a `mixed` federation found in `dataset.paths`",
        shown_default="`dataset.name`", choices=DATASETS))
    selected_classes: list[str] | None = field(default=None, metadata=_rule(
        "the classes this node holds", shown_default="every class of the corpus"))
    excluded_classes: list[str] | None = field(default=None, metadata=_rule(
        "classes this node leaves out (not with `selected_classes`)", shown_default="none"))
    use_folds: bool | list[int] | None = field(default=None, metadata=_rule(
        "`true`/`false`: fold or ratio splits; a list: fold splits using only these folds",
        shown_default="`dataset.use_folds`"))
    train_folds: list[int] | None = field(default=None, metadata=_rule(
        "this node's training folds", shown_default="`dataset.train_folds`"))
    val_folds: list[int] | None = field(default=None, metadata=_rule(
        "this node's validation folds", shown_default="`dataset.val_folds`"))
    test_folds: list[int] | None = field(default=None, metadata=_rule(
        "this node's held-out folds", shown_default="`dataset.test_folds`"))
    train_ratio: float | None = field(default=None, metadata=_rule(
        "this node's training share of a ratio split", shown_default="`dataset.train_ratio`",
        min=0.0, max=1.0))
    val_ratio: float | None = field(default=None, metadata=_rule(
        "this node's validation share", shown_default="`dataset.val_ratio`", min=0.0,
        max=1.0))
    test_ratio: float | None = field(default=None, metadata=_rule(
        "this node's held-out share of a ratio split", shown_default="`dataset.test_ratio`",
        min=0.0, max=1.0))
    stratify: bool | None = field(default=None, metadata=_rule(
        "this node's ratio splits are made per class", shown_default="`dataset.stratify`"))
    num_samples_per_class: int | None = field(default=None, metadata=_rule(
        "this node keeps at most the first N clips of each class",
        shown_default="`dataset.num_samples_per_class`", min=1))
    samples_per_node: int | None = field(default=None, metadata=_rule(
        "`dataset.partition` `classes`: this node's block of N clips per class (with "
        "`node_split_id`; not with `num_nodes`)", shown_default="none", min=1))
    node_split_seed: int | None = field(default=None, metadata=_rule(
        "seeds this node's ratio splits", shown_default="`dataset.node_split_seed`"))
    node_split_id: int | None = field(default=None, metadata=_rule(
        "which shard of the corpus is this node's (0-based); a node JSON with neither this "
        "nor `num_nodes` uses its node's whole corpus, a shard of several needs both",
        shown_default="in simulation, the node's id; in a node's own file, 0", min=0))
    num_nodes: int | None = field(default=None, metadata=_rule(
        "how many shards the corpus is cut into",
        shown_default="in simulation, `federation.num_clients`; in a node's own file, 1", min=1))
    diffusion_type: str | None = field(default=None, metadata=_rule(
        "must equal `feda2v.diffusion_type` (sd and flux adapters cannot be averaged)",
        shown_default="`feda2v.diffusion_type`", choices=DIFFUSION_TYPES))
    use_cls_token_only: bool | None = field(default=None, metadata=_rule(
        "this node's adapters see only the AST's first (CLS) token",
        shown_default="`feda2v.use_cls_token_only`"))
    dataset_path: str | None = field(default=None, metadata=_rule(
        "this node's corpus folder or manifest", shown_default="`dataset.path`"))
    cache_dir: str | None = field(default=None, metadata=_rule(
        "this node's token and target cache", shown_default="`experiment.cache_dir`"))
    device: str | None = field(default=None, metadata=_rule(
        "where this node's encoders and adapters run", shown_default="`experiment.device`",
        pattern=DEVICE_PATTERN, shown="cpu, auto, cuda, cuda:N"))
    batch_size: int | None = field(default=None, metadata=_rule(
        "this node's local batch size", shown_default="`training.batch_size`", min=1))
    pipeline: str | None = field(default=None, metadata=_rule(
        "the FLUX pipeline this node renders with (`feda2v.generate_nodes_images_frequency`)",
        shown_default="`feda2v.generation_pipeline`"))
    images_dir: str | None = field(default=None, metadata=_rule(
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

    experiment: ExperimentConfig = field(default_factory=ExperimentConfig, metadata=_rule(
        "name, seed, output folder, device, precision of the frozen encoders, cache folder"))
    federation: FederationConfig = field(default_factory=FederationConfig, metadata=_rule(
        "rounds, nodes, local epochs, sampling, quorum and timeouts, transport dtype, Flower "
        "strategy, baselines, overlap check"))
    training: TrainingConfig = field(default_factory=TrainingConfig, metadata=_rule(
        "batch size, optimizer, learning rate and weight decay (the adapters' fallback), "
        "gradient accumulation"))
    dataset: DatasetConfig = field(default_factory=DatasetConfig, metadata=_rule(
        "which corpus, where, how it is split over nodes and into train / val / test, prompt "
        "template"))
    feda2v: FedA2VConfig = field(default_factory=FedA2VConfig, metadata=_rule(
        "the models (audio encoder, CLIP, T5), diffusion type, adapter shapes and learning "
        "rates, batching and loss, checkpoints, images rendered on the nodes"))
    wandb: WandbConfig = field(default_factory=WandbConfig, metadata=_rule(
        "Weights & Biases logging beside TensorBoard"))
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig, metadata=_rule(
        "central differential privacy at node level: nodes clip their adapter updates, the "
        "server adds Gaussian noise to their mean, an RDP accountant gives (ε, δ)"))
    nodes: dict[str, NodeConfig] = field(default_factory=dict, metadata=_rule(
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
