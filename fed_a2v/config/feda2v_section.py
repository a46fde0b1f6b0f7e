"""The experiment's `feda2v` section: the models (audio encoder, CLIP, T5), diffusion type,
adapter shapes, learning rates, loss and batching, adapter checkpoints, generators and
knowledge distillation, and the images rendered on the nodes (fed_a2v.config.schema holds the
other sections)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fed_a2v.config.field_rules import rule

DIFFUSION_TYPES = ("flux", "sd")
AGGREGATION_MODES = ("weighted_average", "avg", "none", "kd")
GENERATOR_KINDS = ("gaussian", "replay", "noise")  # fed_a2v.model.generators
GENERATOR_GRANULARITIES = ("per_class", "unified", "per_group")
KD_TEACHERS = ("class_holders", "all_nodes")
ADAPTER_DESIGNS = ("fed_a2v", "upstream")
SCHEDULES = (True, False, "constant", "cosine")


@dataclass
class FedA2VConfig:
    diffusion_type: str = field(default="flux", metadata=rule(
        "`flux`: a CLIP adapter to the pooled CLIP embedding (768) and a T5 adapter to the T5 "
        "sequence; `sd` (Stable Diffusion 1.x): one CLIP adapter to the CLIP text encoder's "
        "token sequence (`clip_max_length` x 768), no T5 encoder loaded. A node's own "
        "`diffusion_type` must equal it (sd and flux adapters cannot be averaged)",
        choices=DIFFUSION_TYPES))
    clip_max_length: int = field(default=77, metadata=rule(
        "`sd`: prompt tokens, the CLIP adapter's latents", min=1))
    use_cls_token_only: bool = field(default=False, metadata=rule(
        "the adapters see only the AST's first (CLS) token; a node's own key wins (the token "
        "cache keeps every token)"))
    adapter_aggregation_mode: str = field(default="weighted_average", metadata=rule(
        "`weighted_average`: FedAvg by examples; `avg`: unweighted mean; `none`: standalone "
        "nodes (each trains alone, nothing is exchanged after the first message); `kd`: FedAvg, "
        "then distilled on samples of the nodes' per-class generators (see `kd_*`, "
        "`generator_*`)",
        choices=AGGREGATION_MODES))
    adapter_checkpoint_dir: str = field(default="checkpoints/adapters", metadata=rule(
        "where the global adapters are saved (`adapter_save_checkpoint`) and loaded from "
        "(`adapter_load_checkpoint`); relative: to the working directory"))
    adapter_checkpoint_base_name: str = field(default="adapter", metadata=rule(
        "the saved files' name prefix: `<base>_<adapter>_round<N>.safetensors` "
        "(`adapter_checkpoint_per_type`) or `<base>_round<N>.safetensors`"))
    adapter_save_checkpoint: bool = field(default=False, metadata=rule(
        "save the global adapters every `adapter_checkpoint_frequency` rounds and after the "
        "last one"))
    adapter_load_checkpoint: bool = field(default=False, metadata=rule(
        "start the run from the latest round saved in `adapter_checkpoint_dir` (not with "
        "`adapter_aggregation_mode` `none`)"))
    adapter_checkpoint_frequency: int = field(default=5, metadata=rule(
        "rounds between saved adapters", min=1))
    adapter_checkpoint_per_type: bool = field(default=True, metadata=rule(
        "one file per adapter; `false`: one file for both"))
    audio_model_name: str = field(default="builtin:tiny-ast", metadata=rule(
        "the frozen audio encoder (AST): `builtin:tiny-ast`, a hub id or a local directory"))
    clip_model_name: str = field(default="builtin:tiny-clip", metadata=rule(
        "the CLIP text model: `builtin:tiny-clip`, a hub id or a local directory"))
    t5_model_name: str = field(default="builtin:tiny-t5", metadata=rule(
        "the T5 encoder: `builtin:tiny-t5`, a hub id or a local directory"))
    clip_model_subfolder: str | None = field(default=None, metadata=rule(
        "the CLIP text model's subfolder, e.g. `text_encoder` in a FLUX-style repository",
        shown_default="none"))
    t5_model_subfolder: str | None = field(default=None, metadata=rule(
        "the T5 encoder's subfolder, e.g. `text_encoder_2` in a FLUX-style repository",
        shown_default="none"))
    clip_tokenizer_subfolder: str | None = field(default=None, metadata=rule(
        "the CLIP tokenizer's subfolder",
        shown_default="FLUX convention: `tokenizer` for `text_encoder`, else the model's "
                      "subfolder"))
    t5_tokenizer_subfolder: str | None = field(default=None, metadata=rule(
        "the T5 tokenizer's subfolder",
        shown_default="FLUX convention: `tokenizer_2` for `text_encoder_2`, else the model's "
                      "subfolder"))
    targets_file: str | None = field(default=None, metadata=rule(
        "targets written by `fed-a2v targets`: the server then loads no text encoder",
        shown_default="none"))
    t5_max_length: int = field(default=17, metadata=rule(
        "T5 prompt tokens, the T5 adapter's latents", min=1))
    clip_adapter_learning_rate: float | None = field(default=None, metadata=rule(
        "the CLIP adapter's learning rate", shown_default="`training.learning_rate`",
        min_exclusive=0.0))
    clip_adapter_weight_decay: float | None = field(default=None, metadata=rule(
        "the CLIP adapter's weight decay", shown_default="`training.weight_decay`", min=0.0))
    clip_adapter_learning_rate_schedule: bool | str = field(default=False, metadata=rule(
        "the CLIP adapter's schedule over rounds: `false`/`\"constant\"`, or "
        "`true`/`\"cosine\"` (warmup `lr_warmup_rounds`, then down to `lr_min_ratio`)",
        choices=SCHEDULES))
    t5_adapter_learning_rate: float | None = field(default=None, metadata=rule(
        "the T5 adapter's learning rate", shown_default="`training.learning_rate`",
        min_exclusive=0.0))
    t5_adapter_weight_decay: float | None = field(default=None, metadata=rule(
        "the T5 adapter's weight decay", shown_default="`training.weight_decay`", min=0.0))
    t5_adapter_learning_rate_schedule: bool | str = field(default=False, metadata=rule(
        "the T5 adapter's schedule over rounds, as `clip_adapter_learning_rate_schedule`",
        choices=SCHEDULES))
    lr_warmup_rounds: int = field(default=1, metadata=rule(
        "cosine schedule: rounds of linear warmup", min=0))
    lr_min_ratio: float = field(default=0.1, metadata=rule(
        "cosine schedule: the last round's learning rate over the adapter's own", min=0.0,
        max=1.0))
    use_stratified_batching: bool = field(default=False, metadata=rule(
        "every batch from one class; every clip once per epoch"))
    use_per_class_loss: bool = field(default=False, metadata=rule(
        "the loss is the mean over the batch's classes of each class's mean MSE"))
    retrieval_loss_weight: float = field(default=0.1, metadata=rule(
        "adds weight x the cross-entropy of each prediction's cosine similarities to every "
        "target row (over `retrieval_temperature`) against its own row "
        "(fed_a2v.model.losses.retrieval_loss); 0: MSE alone, as upstream and as before the "
        "default recipe of docs/corpora.md", min=0.0))
    retrieval_temperature: float = field(default=0.1, metadata=rule(
        "the retrieval loss's temperature", min_exclusive=0.0))
    adapter_dropout: float = field(default=0.05, metadata=rule(
        "the adapters' MLP dropout", min=0.0, max=0.9))
    adapter_hidden_dim: int = field(default=512, metadata=rule(
        "adapter shape: hidden width", min=1))
    adapter_num_heads: int = field(default=4, metadata=rule(
        "adapter shape: attention heads of the pooling", min=1))
    adapter_mlp_ratio: int = field(default=2, metadata=rule(
        "adapter shape: MLP width over the hidden width", min=1))
    adapter_norm_groups: int = field(default=8, metadata=rule(
        "adapter shape: GroupNorm groups", min=1))
    adapter_token_statistics: bool = field(default=True, metadata=rule(
        "adapter shape: each adapter's MLP reads the tokens' mean, standard deviation, first "
        "and second token beside its pooled latents (attention pooling cannot compute their "
        "spread); false: the pooled latents alone, as before. `fed_a2v` adapters only"))
    span_adapters: list[str] = field(default_factory=lambda: ["t5"], metadata=rule(
        "adapters (`clip`, `t5`) that predict the mean target row plus coordinates along the "
        "directions in which the rows differ (fed_a2v.model.target_span), their loss taken "
        "there; the others predict every value. `[]`: none, as before. `fed_a2v` adapters "
        "only", shown_default='`["t5"]`', items=("clip", "t5")))
    adapter_design: str = field(default="fed_a2v", metadata=rule(
        "`fed_a2v`: pool at the audio width, then project up (fed_a2v.model.adapters); "
        "`upstream`: the upstream research code's adapters, pooling at the target width, to "
        "compare against",
        choices=ADAPTER_DESIGNS))
    generator_type: str = field(default="gaussian", metadata=rule(
        "the nodes' per-class token-sequence generators (fed_a2v.model.generators): "
        "`gaussian`, a low-rank Gaussian per class; `replay`: the clips' tokens themselves (an "
        "oracle for studies: it sends the node's encoded data); `noise`: one class-blind "
        "Gaussian (a lower bound for studies)", choices=GENERATOR_KINDS))
    generator_granularity: str = field(default="per_class", metadata=rule(
        "which classes share a generator's directions: `per_class` none, `unified` all of a "
        "node's, `per_group` those of one `generator_class_groups` group",
        choices=GENERATOR_GRANULARITIES))
    generator_class_groups: dict[str, list[str]] = field(default_factory=dict, metadata=rule(
        "`per_group`: group name -> its classes; a class in no group is its own"))
    generator_rank: int = field(default=8, metadata=rule(
        "directions a generator keeps (at most its clips minus one)", min=0))
    generator_training_mode: bool = field(default=False, metadata=rule(
        "the nodes fit their generators and save them (`generator_checkpoint_dir`), and do "
        "not train adapters: upstream's first phase"))
    generator_checkpoint_dir: str = field(default="checkpoints/generators", metadata=rule(
        "where nodes save their generators (`generator_save_checkpoint`, "
        "`generator_training_mode`) and the server loads them (`generator_load_checkpoint`); "
        "relative: to the working directory"))
    generator_checkpoint_base_name: str = field(default="generator", metadata=rule(
        "the files' prefix, upstream's names: `<base>_node<id>_class_<c>_round_<r>.pt`"))
    generator_save_checkpoint: bool = field(default=False, metadata=rule(
        "nodes save their generators when they fit them"))
    generator_load_checkpoint: bool = field(default=False, metadata=rule(
        "the server starts from the generators saved in `generator_checkpoint_dir` (each "
        "node's latest round) instead of asking the nodes"))
    generator_validation_frequency: int = field(default=5, metadata=rule(
        "every N rounds in which a node fits its generators, it reports how they do "
        "(`generator_own_top1`: how often its own adapters put a sample nearest its class; "
        "`generator_frechet`: the Fréchet distance between sampled and real mean-pooled "
        "tokens); 0: never", min=0))
    kd_training_epochs: int = field(default=5, metadata=rule(
        "`kd`: the server's distillation epochs each round", min=1))
    kd_learning_rate: float = field(default=1e-3, metadata=rule(
        "`kd`: the distillation's AdamW learning rate", min_exclusive=0.0))
    kd_samples_per_class: int = field(default=32, metadata=rule(
        "`kd`: generated samples of each class the server distils on", min=1))
    kd_teacher: str = field(default="class_holders", metadata=rule(
        "`kd`: a class's teacher is the example-weighted mean of the adapters of the nodes "
        "that hold it (`class_holders`), or of every node (`all_nodes`, as upstream)",
        choices=KD_TEACHERS))
    generate_nodes_images_frequency: int = field(default=0, metadata=rule(
        "every N rounds (0: never) each node renders its first `generate_images_per_node` "
        "held-out clips with the global adapters, on the node (fed_a2v.generate.node_images); "
        "those rounds are evaluation rounds too, whatever `eval_gap` says. Needs "
        "`diffusion_type` `flux`", min=0))
    generate_images_per_node: int = field(default=4, metadata=rule(
        "how many held-out clips a node renders (its first K, the same each round; clip i uses "
        "seed `experiment.seed + i`)", min=1))
    generation_pipeline: str = field(default="", metadata=rule(
        "the FLUX pipeline (hub id, local FLUX-layout folder or `builtin:tiny-flux`); empty: "
        "`builtin:tiny-flux` with builtin text models, else the FLUX repository the T5 targets "
        "came from (`black-forest-labs/FLUX.1-schnell` when T5 is not in one). A node's own "
        "`pipeline` wins"))
    generation_steps: int = field(default=1, metadata=rule(
        "denoising steps (one, as upstream rendered with FLUX.1-schnell)", min=1))
    generation_size: int = field(default=512, metadata=rule(
        "image height = width in pixels (a multiple of 16 for FLUX.1, of 2 for "
        "`builtin:tiny-flux`)", min=16))
    generation_guidance: float = field(default=0.0, metadata=rule(
        "guidance scale (none, as upstream rendered with FLUX.1-schnell)", min=0.0))
    images_output_dir: str = field(default="", metadata=rule(
        "where nodes write their images: `<dir>/<run id>/<node>/round_<r>/<clip stem>.png`; "
        "empty: `<the node's cache folder>/images`; a node's own `images_dir` wins"))
