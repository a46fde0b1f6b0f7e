"""Every key of upstream's config files: what upstream's FedA2V did with it, what FedA2V does.

Upstream is the research code `lucapalazzo/fedgfe` (`system/main.py -c configs/a2v*.json`); the
rows cover every key of its `configs/a2v*.json` and `vegas*.json` files and of its
`ConfigLoader.DEFAULT_VALUES`. `fed_a2v.config.upstream` reads files with this table and
`python -m fed_a2v.config.reference --write` writes it into docs/upstream-config.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IMPLEMENTED, MAPPED, METADATA, UNSUPPORTED = "implemented", "mapped", "metadata", "not supported"
ALWAYS = "always"  # `inert`: no value of the key asks for anything
UNSET = object()  # `default`: upstream had none

# Why a group of keys is not supported: a short label for the warning line, and the reason.
REASONS: dict[str, tuple[str, str]] = {
    "global_train": ("global_model_train*", "no-ops or crashed upstream; the server-side "
                                            "generator never trained"),
    "per_class": ("per-class means", "the server's per-class output means fed only its global "
                                     "training: no-ops or crashed upstream; the server-side "
                                     "generator never trained"),
    "image": ("image-generation keys", "FedA2V renders images on the nodes from their audio "
                                       "(feda2v.generate_nodes_images_frequency) and after a "
                                       "run (`fed-a2v generate`); not on the server, not from "
                                       "text embeddings, not in bfloat16 by this key"),
    "sd_images": ("sd images", "nodes render with a FLUX pipeline, which the flux adapters "
                               "condition; an sd run renders no images"),
    "runs": ("runs", "one run per call: start `fed-a2v simulate` once per repetition"),
    "node_adapter": ("per-node adapter settings", "every node trains with the same adapter "
                                                  "settings (feda2v.*: learning rates, weight "
                                                  "decay, dropout)"),
    "official_split": ("use_official_split", "VGGSound is split by ratios (as upstream did "
                                             "when the key was absent)"),
    "optimizer": ("training.optimizer", "upstream built no adapter optimizer for it, so its "
                                        "adapters never trained; FedA2V trains with AdamW"),
    "standalone_load": ("adapter_load_checkpoint", "standalone nodes each loading their own "
                                                   "saved adapters: FedA2V loads saved global "
                                                   "adapters only (avg or weighted_average); "
                                                   "the nodes start fresh"),
    "legacy": ("legacy keys", "never read by upstream's FedA2V"),
    "memory": ("memory tricks", "upstream's GPU-memory workarounds for holding a diffusion "
                                "pipeline; FedA2V trains without one"),
}
IMAGES_ON = ("feda2v.generate_nodes_images_frequency", "feda2v.generate_global_images_frequency")


@dataclass(frozen=True)
class Key:
    """One upstream key path (`nodes.*.key` for a node's key)."""

    path: str
    status: str
    did: str  # what upstream's FedA2V did with it
    does: str = ""  # what FedA2V does, beyond the status
    default: Any = UNSET  # upstream's ConfigLoader default
    # mapped: the native key path, or "@name" of a translation in fed_a2v.config.upstream
    to: str = ""
    reason: str = ""  # not supported: a key of REASONS
    inert: Any = ()  # not supported: values beside false/0/null/"none"/default that ask nothing
    when: tuple[str, ...] = ()  # not supported: it asks only when one of these keys asks

    def is_inert(self, value: Any) -> bool:
        """Whether `value` asks for nothing (then the key is dropped silently)."""
        if self.inert == ALWAYS:
            return True
        if isinstance(value, bool) or value is None:
            return not value or value == self.default
        if value in (0, "none", "", [], {}) or value in self.inert:
            return True
        return self.default is not UNSET and value == self.default


def _impl(path: str, did: str, does: str = "", default: Any = UNSET) -> Key:
    return Key(path, IMPLEMENTED, did, does, default)


def _map(path: str, to: str, did: str, does: str, default: Any = UNSET) -> Key:
    return Key(path, MAPPED, did, does, default, to=to)


def _no(path: str, reason: str, did: str, does: str = "", default: Any = UNSET,
        inert: Any = (), when: tuple[str, ...] = ()) -> Key:
    return Key(path, UNSUPPORTED, did, does, default, reason=reason, inert=inert, when=when)


def _legacy(path: str, did: str, default: Any = UNSET, does: str = "") -> Key:
    return _no(path, "legacy", did, does, default, inert=ALWAYS)


def _meta(pattern: str, did: str) -> Key:
    return Key(pattern, METADATA, did, "ignored silently, anywhere in the file")


CACHE = ("FedA2V always caches the encoded audio tokens (`experiment.cache_dir`; see the token "
         "cache in the README): nothing to set")
EVAL = "FedA2V always evaluates every node on its val and test splits: nothing to set"
FOLDS = ("FedA2V numbers folds as the corpus does: each upstream fold k becomes k+1 (ESC-50's "
         "fold00.json / CSV fold 1 ...)")
PFL = "legacy PFLlib argument; no effect on the A2V adapters"
SINESTESIA = "argument of the earlier Audio2Visual scripts; no effect in FedA2V's runs"
GEN = "VAE generators of audio embeddings"
KD_DOC = "see docs/kd.md"
GAUSSIAN = ("FedA2V's node generators are per-class low-rank Gaussians fitted in closed form "
            f"({KD_DOC}), not upstream's VAE")
CLOSED_FORM = ("the generators are fitted in closed form (one SVD): no epochs and no input "
               "augmentation")
OWN_FIT = ("each class of each node gets its own fit; no generator is shared between nodes "
           "(the server merges each class's generators over the nodes that hold it)")
EVERY_CLASS = ("nodes fit a generator for every class they hold (for a group: "
               "feda2v.generator_class_groups)")

KEYS: tuple[Key, ...] = (
    # --- metadata ------------------------------------------------------------------------
    _meta("_comment*", "documentation only, never read"),
    _meta("//*", "documentation only, never read"),
    _meta("comment", "documentation only, never read"),
    _meta("comments", "documentation only (a section of notes in some files)"),
    _meta("notes", "documentation only"),
    _meta("description", "documentation only (experiment.description)"),
    _meta("goal", "an argparse attribute for the run's label; no effect in FedA2V"),
    _meta("_instructions", "documentation only (template instructions)"),
    _meta("_available_*", "documentation only (lists of class names)"),
    # --- experiment ----------------------------------------------------------------------
    _impl("experiment.name", "unused", "names the run directory"),
    _map("experiment.device", "@device", "`cuda` or `cpu` (the server hard-codes cuda:0/1)",
         "with device_id: `cuda` + `0` -> `experiment.device` \"cuda:0\"; `cpu` -> \"cpu\"; "
         "absent: \"auto\" (a GPU when there is one)", default="cuda"),
    _map("experiment.device_id", "@device", "index of the GPU", "see experiment.device",
         default="0"),
    _no("experiment.runs", "runs", "repeats the whole experiment `runs` times", default=1),
    _map("experiment.seed", "@seed", "global seed unless -1",
         "`experiment.seed`; -1 (upstream: unseeded) -> FedA2V's default seed 0", default=-1),
    _legacy("experiment.optimize_memory", "unused", default=False),
    _legacy("experiment.debug", "unused", default=False),
    _no("experiment.optimize_memory_usage", "memory",
        "moves the diffusion pipeline to CPU after each round", default=False, inert=ALWAYS),
    _no("experiment.use_balooning", "memory", "reserves a 34 GiB GPU 'balloon' to hold the card",
        default=False, inert=ALWAYS),
    # --- federation ----------------------------------------------------------------------
    _impl("federation.algorithm", "picks the server class (FedA2V)",
          "only \"FedA2V\"; its presence marks the file as upstream's", default="FedAvg"),
    _map("federation.num_clients", "@num_clients", "overwritten with the number of `nodes` "
         "entries", "the number of `nodes` entries (the file's value is ignored, as upstream did)",
         default=2),
    _impl("federation.global_rounds", "number of rounds", default=100),
    _impl("federation.local_epochs", "epochs per round on each node", default=1),
    _impl("federation.join_ratio", "unused by FedA2V's server (every node trains every round)",
          "fraction of nodes sampled per round; min_clients = max(1, round(join_ratio x nodes))",
          default=1.0),
    _impl("federation.eval_gap", "evaluates before the round when round % eval_gap == 0",
          "nodes evaluate every eval_gap rounds and after the last", default=1),
    _no("federation.generate_images_frequency", "image", "not read (the feda2v keys are)",
        default=0, inert=ALWAYS),
    _no("federation.model_aggregation", "per_class", "`per_class_average`: the server averages "
        "the nodes' per-class adapter outputs; other values do nothing",
        inert=("weighted_average", "fedavg")),
    _map("federation.diffusion_type", "feda2v.diffusion_type", "the server's and so every "
         "adapter's diffusion type", "`feda2v.diffusion_type` (wins over upstream's "
         "feda2v.diffusion_type, as upstream)"),
    _map("federation.use_saved_audio_embeddings", "@drop", "never mapped: always false", CACHE),
    # --- model: PFLlib backbones, nothing of A2V ------------------------------------------
    _legacy("model.backbone", "`a2v` sets no backbone; `vit` builds an unused ViT", "cnn"),
    _legacy("model.backbone_model", PFL, "hf_vit"),
    _legacy("model.pretrained", PFL, False),
    _legacy("model.num_classes", "stored by the server, otherwise unused", 10),
    _legacy("model.embedding_size", PFL, 768),
    _legacy("model.patch_size", PFL, 16),
    _legacy("model.patch_count", PFL),
    # --- training ------------------------------------------------------------------------
    _map("training.optimizer", "@optimizer", "`AdamW` (any case) builds one AdamW per adapter; "
         "any other value builds no optimizer (the adapters do not train)",
         "AdamW for any value; a value other than AdamW is named in the warning", default="SGD"),
    _impl("training.learning_rate", "server-side optimizers; not the adapters' rate",
          "the adapters' rate where feda2v.*_adapter_learning_rate is unset", default=0.005),
    _impl("training.batch_size", "the nodes' batch size", default=10),
    _impl("training.weight_decay", "not used by the adapter optimizers",
          "the adapters' weight decay where feda2v.*_adapter_weight_decay is unset",
          default=0.001),
    _legacy("training.momentum", "not used by the AdamW adapter optimizers", 0.9),
    _legacy("training.learning_rate_schedule", "not used by the adapter optimizers", False),
    # --- dataset -------------------------------------------------------------------------
    _map("dataset.name", "@dataset_name", "fallback corpus of nodes without `dataset`; the "
         "nodes' `dataset` decides", "ESC50/VEGAS/VGGSound/MIXED -> esc50/vegas/vggsound/mixed "
         "(any case); when the nodes name their corpora: the one kind they name, else mixed",
         default="mnist"),
    _impl("dataset.path", "unused (corpus roots were hard-coded)",
          "where the corpora are (see Dataset roots)", default=""),
    _legacy("dataset.image_size", PFL, -1),
    _legacy("dataset.transform", PFL, False),
    _legacy("dataset.partition", "PFLlib's dataset generation (`iid`, `pat`)", "pat",
            does="upstream files get FedA2V's partition \"classes\" (each node holds its classes)"),
    _legacy("dataset.dir_alpha", PFL, 0.1),
    _legacy("dataset.balance", PFL, False),
    _impl("dataset.stratify", "never read (splits were always stratified)",
          "default of nodes that do not say"),
    _impl("dataset.train_ratio", "never read (nodes default to 0.8; VGGSound 0.7)",
          "default of nodes that do not say (upstream default 0.8)"),
    _impl("dataset.val_ratio", "never read (nodes default to 0.1)",
          "default of nodes that do not say (upstream default 0.1)"),
    _impl("dataset.test_ratio", "never read (test = 1 - train - val)",
          "default of nodes that do not say; unset: 1 - train - val, as upstream"),
    # --- rewind / fedgfe: other algorithms of the same code base --------------------------
    _legacy("rewind.epochs", "FedRewind schedule; unused by FedA2V", 0),
    _legacy("rewind.ratio", "FedRewind schedule; unused by FedA2V", 0.0),
    _legacy("rewind.interval", "FedRewind schedule; unused by FedA2V", 0),
    _legacy("rewind.strategy", "FedRewind schedule; unused by FedA2V", "none"),
    _legacy("fedgfe.nodes_datasets", "FedGFE argument; unused by FedA2V", "cifar10"),
    _legacy("fedgfe.nodes_downstream_tasks", "FedGFE argument; unused by FedA2V", "none"),
    _legacy("fedgfe.nodes_pretext_tasks", "FedGFE argument; unused by FedA2V", ""),
    _legacy("fedgfe.nodes_training_sequence", "FedGFE argument; unused by FedA2V", "both"),
    _legacy("fedgfe.cls_token_only", "FedGFE argument; unused by FedA2V", False,
            does="FedA2V's switch is feda2v.use_cls_token_only"),
    _legacy("fedgfe.limit_samples_number", "FedGFE argument; unused by FedA2V", 0),
    # --- feda2v: adapters ----------------------------------------------------------------
    _impl("feda2v.diffusion_type", "fallback when federation.diffusion_type is absent",
          "flux: CLIP pooled + T5 targets; sd: the CLIP sequence (77x768), no T5 adapter",
          default="sd"),
    _impl("feda2v.use_cls_token_only", "adapters see only the AST's first (CLS) token",
          "the same; nodes may override it", default=False),
    _impl("feda2v.clip_adapter_learning_rate", "AdamW rate of the CLIP adapter", default=1e-4),
    _impl("feda2v.clip_adapter_weight_decay", "AdamW weight decay of the CLIP adapter",
          default=1e-4),
    _impl("feda2v.clip_adapter_learning_rate_schedule", "true: cosine annealing with warm "
          "restarts (T_0 = local_epochs x rounds / 10)", "true: FedA2V's cosine schedule over "
          "rounds (feda2v.lr_warmup_rounds, lr_min_ratio)", default=False),
    _impl("feda2v.t5_adapter_learning_rate", "AdamW rate of the T5 adapter", default=1e-3),
    _impl("feda2v.t5_adapter_weight_decay", "AdamW weight decay of the T5 adapter",
          default=1e-3),
    _impl("feda2v.t5_adapter_learning_rate_schedule", "true: cosine annealing over the rounds",
          "true: FedA2V's cosine schedule over rounds", default=False),
    _legacy("feda2v.adapters_learning_rate", "rate of adapters other than clip/t5 (none exist)",
            1e-4),
    _legacy("feda2v.adapters_weight_decay", "weight decay of adapters other than clip/t5",
            1e-4),
    _legacy("feda2v.adapters_learning_rate_schedule", "read, unused"),
    _map("feda2v.adapter_aggregation_mode", "@aggregation", "`avg`: unweighted mean of the "
         "nodes' adapters; `none`: standalone nodes; `kd`: server-side distillation from "
         "generator samples; `weighted_average` or absent: nothing aggregated (standalone)",
         "`avg` and `none` as upstream; `weighted_average`: FedAvg weighted by examples; "
         "`kd`: FedAvg, then server-side distillation on samples of the nodes' per-class "
         f"generators ({KD_DOC}); absent in an upstream file: none"),
    _legacy("feda2v.adapter_aggregation_method", "dead (the code reads adapter_aggregation_mode)",
            "none"),
    _impl("feda2v.adapter_checkpoint_dir", "folder of the adapter checkpoints (.pt)",
          "folder of the adapter checkpoints (.safetensors)", default="checkpoints/adapters"),
    _impl("feda2v.adapter_checkpoint_base_name", "file-name prefix of the checkpoints",
          default="adapter"),
    _impl("feda2v.adapter_save_checkpoint", "nodes save their adapters every frequency rounds",
          "the aggregated adapters are saved every frequency rounds and at the end",
          default=False),
    _impl("feda2v.adapter_load_checkpoint", "start from saved adapters (and skip training)",
          "start from the latest saved adapters (training goes on); with "
          "adapter_aggregation_mode none: not supported (named in the warning), the nodes "
          "start fresh", default=False),
    _impl("feda2v.adapter_checkpoint_frequency", "rounds between checkpoints", default=5),
    _impl("feda2v.adapter_checkpoint_per_type", "one file per adapter module", default=True),
    _impl("feda2v.audio_model_name", "an argparse value; the AST id is hard-coded",
          "the audio encoder; upstream files default to MIT/ast-finetuned-audioset-10-10-0.4593",
          default="MIT/ast-finetuned-audioset-10-10-0.4593"),
    _map("feda2v.train_adapters", "@drop", "falsy (also when absent): the server skips its "
         "train/test evaluation", EVAL),
    _map("feda2v.nodes_test_metrics_splits", "@drop", "node splits evaluated at generation "
         "rounds", EVAL, default=["val", "test"]),
    _map("feda2v.nodes_train_metrics_splits", "@drop", "node splits whose train metrics are "
         "logged", EVAL, default=["train"]),
    _map("feda2v.server_test_metrics_splits", "@drop", "splits concatenated into server "
         "datasets", EVAL, default=["val", "test"]),
    _map("feda2v.server_train_metrics_splits", "@drop", "wandb metric definitions only", EVAL,
         default=["train"]),
    _map("feda2v.store_audio_embeddings", "@drop", "caches AST outputs and saves them after "
         "round 1", CACHE, default=False),
    _map("feda2v.audio_embedding_file_name", "@drop", "file of those saved AST outputs", CACHE,
         default="audio_embeddings.pt"),
    _map("feda2v.embeddings_checkpoint_dir", "@drop", "folder of generate_embeddings_only "
         "files", CACHE, default="checkpoints/embeddings"),
    _map("feda2v.project", "wandb.project", "parsed, never passed to wandb.init (project "
         "was always \"FedA2V\")", "`wandb.project` (upstream files default to \"FedA2V\")",
         default="sinestesia"),
    _map("feda2v.entity", "wandb.entity", "parsed, never passed (the entity was hard-coded)",
         "`wandb.entity`", default="ctlab-team"),
    _map("feda2v.wandb_mode", "wandb.mode", "parsed, never passed", "`wandb.mode`",
         default="offline"),
    _legacy("feda2v.use_act_loss", SINESTESIA, False),
    _legacy("feda2v.use_text_loss", SINESTESIA, True),
    _legacy("feda2v.use_image_loss", SINESTESIA, False),
    _legacy("feda2v.text_losses_summed", "the client hard-codes false", False),
    _legacy("feda2v.mode", SINESTESIA, "train_nodata"),
    _legacy("feda2v.image_model_name", SINESTESIA, "google/vit-base-patch16-224-in21k"),
    _legacy("feda2v.img_pipe_name", "hard-coded in the code instead",
            "runwayml/stable-diffusion-v1-5"),
    _legacy("feda2v.img_lcm_lora_id", SINESTESIA, "latent-consistency/lcm-lora-sdv1-5"),
    _legacy("feda2v.audio_pipe_name", SINESTESIA, "cvssp/audioldm-l-full"),
    _legacy("feda2v.steps", SINESTESIA, 1000),
    _legacy("feda2v.ablation_type", SINESTESIA, "only_t5"),
    _legacy("feda2v.controllability_type", SINESTESIA, "volume"),
    _legacy("feda2v.target_img_path", SINESTESIA, "data/img"),
    _legacy("feda2v.img_out_path", SINESTESIA, "exp/img"),
    _legacy("feda2v.audio_out_path", SINESTESIA, "exp/audio"),
    _legacy("feda2v.class_to_activate", SINESTESIA, 8),
    _legacy("feda2v.single_class", SINESTESIA, False),
    _legacy("feda2v.checkpoint_name", SINESTESIA, "best_model"),
    _legacy("feda2v.optimize_memory_usage", "not read (experiment.optimize_memory_usage is)"),
    # --- feda2v: image generation --------------------------------------------------------
    _impl("feda2v.generate_nodes_images_frequency", "every f rounds each node generates "
          "images of its val/test/train clips", "every f rounds (0: never) each node renders "
          "its first feda2v.generate_images_per_node held-out (test) clips with the round's "
          "global adapters, into its own folder; those rounds are evaluation rounds. With "
          "diffusion_type sd: not supported, named in the warning line (no images)",
          default=0),
    _no("feda2v.generate_global_images_frequency", "image", "every f rounds the server "
        "generates images with the aggregated adapters", default=0),
    _impl("feda2v.images_output_dir", "folder of the generated PNGs",
          "each node writes <dir>/<run id>/<node>/round_<r>/<clip stem>.png on its own disk "
          "(a node's `images_dir` wins); unset: the node's cache folder/images",
          default="output_images"),
    _map("feda2v.output_image_base_name", "@drop", "prefix of the PNG names",
         "FedA2V names each PNG after its clip (<clip stem>.png): nothing to set",
         default="img"),
    _map("feda2v.save_generated_images_splits", "@drop", "splits whose images are kept",
         "nodes render their held-out (test) clips only, the first "
         "feda2v.generate_images_per_node of them: nothing to set", default=["test", "val"]),
    _no("feda2v.generation_split_for_metrics", "image", "read, never used",
        default=["test", "val"], inert=ALWAYS),
    _no("feda2v.generate_low_memomy_footprint", "image", "diffusion in bfloat16", default=False,
        when=IMAGES_ON),
    _no("feda2v.generate_from_clip_text_embeddings", "image", "generate from the class's CLIP "
        "text embedding instead of the adapter's", default=False, when=IMAGES_ON),
    _no("feda2v.generate_from_t5_text_embeddings", "image", "generate from the class's T5 "
        "text embedding instead of the adapter's", default=False, when=IMAGES_ON),
    _no("feda2v.generate_global_images_average_text_embeddings", "image", "server generation "
        "from averaged text embeddings", when=IMAGES_ON),
    _no("feda2v.generate_embeddings_only", "image", "at generation rounds save the adapters' "
        "embeddings instead of images", default=False, when=IMAGES_ON),
    # --- feda2v: server-side global training ---------------------------------------------
    _no("feda2v.global_model_train", "global_train", "server trains global adapters/generators "
        "after each round", default=False),
    _no("feda2v.global_model_train_epochs", "global_train", "epochs of that training",
        default=1, when=("feda2v.global_model_train",)),
    _no("feda2v.global_model_train_from_nodes_adapters", "global_train", "from the nodes' "
        "adapter outputs", default=False, when=("feda2v.global_model_train",)),
    _no("feda2v.global_model_train_from_generator", "global_train", "from the generators",
        default=False, when=("feda2v.global_model_train",)),
    _no("feda2v.global_model_train_from_nodes_audio_embeddings", "global_train", "from the "
        "nodes' audio embeddings", default=False, when=("feda2v.global_model_train",)),
    _no("feda2v.global_model_train_inputs", "global_train", "never read", default="none",
        inert=ALWAYS),
    _no("feda2v.compute_global_mean_from_class_means", "per_class", "one global mean from the "
        "per-class means", default=False,
        when=("federation.model_aggregation=per_class_average",)),
    # --- feda2v: generators and knowledge distillation ------------------------------------
    _map("feda2v.use_generator", "@drop", f"enables per-node and server {GEN}",
         "nodes fit generators whenever KD (adapter_aggregation_mode kd) or "
         "generator_training_mode asks for them; alone it asks for nothing more", default=False),
    _impl("feda2v.generator_training_mode", "rounds train only the generators",
          "nodes fit and save their generators and train no adapters (upstream's first phase)",
          default=False),
    _map("feda2v.generator_only_mode", "@only_mode", "no diffusion, no round-end hooks",
         "true: `feda2v.generator_training_mode` true (nodes fit their generators and train "
         "no adapters)", default=False),
    _map("feda2v.use_pretrained_generators", "@pretrained", "skip the AST; samples come from "
         "loaded generators", "true: `feda2v.generator_load_checkpoint` true (the server starts "
         "from the saved generators)", default=False),
    _map("feda2v.generator_type", "@generator_type", "`vae` (or `gan`)", "any value: "
         f"\"gaussian\" ({GAUSSIAN}); FedA2V's own kinds stay", default="vae"),
    _impl("feda2v.generator_checkpoint_dir", "folder of generator checkpoints",
          "where nodes save their generators and the server loads them",
          default="checkpoints/generators"),
    _impl("feda2v.generator_checkpoint_base_name", "their file-name prefix",
          "the same, in upstream's names `{base}_node{id}_class_{c}_round_{r}.pt`",
          default="generator"),
    _impl("feda2v.generator_save_checkpoint", "save generators",
          "nodes save their generators when they fit them", default=False),
    _impl("feda2v.generator_load_checkpoint", "load generators", "the server starts from the "
          "saved generators (each node's latest round) instead of asking the nodes",
          default=False),
    _map("feda2v.generator_checkpoint_frequency", "@drop", "rounds between generator "
         "checkpoints", "nodes save generators when they fit them (generator_save_checkpoint), "
         "and in generator_training_mode in their first and last round", default=5),
    _impl("feda2v.generator_granularity", "unified / per_class / per_group",
          "`per_class`: no class shares a generator's directions; `unified`: all of a node's "
          "classes do; `per_group`: those of one generator_class_groups group. Absent: "
          "per_class", default="unified"),
    _map("feda2v.generator_class_groups", "@class_groups", "groups of classes for per_group",
         "the same; null: {} (no groups)", default=None),
    _map("feda2v.synthetic_samples_per_class", "@synthetic_samples", "synthetic samples per "
         "class", "an integer: `feda2v.kd_samples_per_class`, unless the file sets that "
         "itself; \"auto\": dropped (FedA2V's default)", default="auto"),
    _map("feda2v.reset_generator_on_class_change", "@drop", "reset a generator between "
         "classes", OWN_FIT, default=True),
    _map("feda2v.shared_generator_in_only_mode", "@drop", "one generator for all nodes",
         OWN_FIT, default=True),
    _map("feda2v.generator_training_epochs", "@drop", "generator epochs", CLOSED_FORM),
    _map("feda2v.generator_augmentation", "@drop", "augment generator inputs", CLOSED_FORM),
    _map("feda2v.generator_augmentation_noise", "@drop", "noise of that augmentation",
         CLOSED_FORM),
    _impl("feda2v.generator_validation_frequency", "rounds between generator validations",
          "every N rounds in which a node fits its generators, it reports how they do "
          "(generator_own_top1, generator_frechet); 0: never"),
    _map("feda2v.generator_training_sequence_length", "@drop", "token length the generators "
         "learn (1214 = the AST's)", "the generators learn the encoder's token sequences "
         "whole, at its own token count (upstream files without this key could not run "
         "upstream; FedA2V takes the encoder's token count)"),
    _legacy("feda2v.generator_target_sequence_length", "never read"),
    _impl("feda2v.kd_training_epochs", "server distillation epochs",
          "the server's distillation epochs each round (adapter_aggregation_mode kd)"),
    _impl("feda2v.kd_learning_rate", "passed on, never used (the distillation stepped the "
          "server's own adapter optimizers)", "the distillation's AdamW rate (upstream never "
          "used it)"),
    _impl("feda2v.kd_samples_per_class", "synthetic samples per class for distillation",
          "generated samples of each class the server distils on"),
    # --- wandb ---------------------------------------------------------------------------
    _impl("wandb.disabled", "false: log to Weights & Biases (project FedA2V)",
          "the same (`pip install fed-a2v[wandb]`); upstream files default to false",
          default=False),
    # --- nodes ---------------------------------------------------------------------------
    _map("nodes.*.dataset", "@node_dataset", "ESC50 / VEGAS / VGGSound (exact case; other "
         "spellings: the node is skipped)", "esc50 / vegas / vggsound, any case"),
    _impl("nodes.*.selected_classes", "the node's classes (names or labels)"),
    _impl("nodes.*.excluded_classes", "classes removed from the node", default=None),
    _impl("nodes.*.diffusion_type", "picks the node's targets (its adapters follow the server)",
          "the node's targets and adapters"),
    _impl("nodes.*.use_cls_token_only", "overrides feda2v.use_cls_token_only for the node"),
    _impl("nodes.*.node_split_id", "VEGAS: which shard of each class the node holds",
          "the same for every corpus", default=None),
    _impl("nodes.*.node_split_seed", "VEGAS: seed of the class shuffles", default=42),
    _impl("nodes.*.num_nodes", "dataset API only: equal shards (the server never passed it)",
          "equal shards of each class", default=None),
    _impl("nodes.*.samples_per_node", "VEGAS: clips per class per shard", default=None),
    _impl("nodes.*.num_samples_per_class", "VEGAS/VGGSound: the first N clips of each class",
          "the same; 0 means no limit"),
    _map("nodes.*.num_samples", "nodes.*.num_samples_per_class", "legacy alias of "
         "num_samples_per_class", "`num_samples_per_class`", default=None),
    _impl("nodes.*.train_ratio", "ESC50/VEGAS/VGGSound ratio split (default 0.8; VGGSound 0.7)"),
    _impl("nodes.*.val_ratio", "ratio split (default 0.1)"),
    _impl("nodes.*.test_ratio", "VGGSound only (default 0.2); others: 1 - train - val",
          "the node's test share; absent: 1 - train - val (VGGSound: 0.2)"),
    _impl("nodes.*.stratify", "ignored (always stratified)", "stratified splits when true"),
    _map("nodes.*.use_folds", "@folds", "dataset API only (the server never passed it)",
         "`nodes.*.use_folds`; true: fold splits; a list: fold splits over those folds (each "
         "k -> k+1)", default=False),
    _map("nodes.*.train_folds", "@folds", "dataset API only (ignored by the server)", FOLDS,
         default=[0, 1, 2, 3]),
    _map("nodes.*.test_folds", "@folds", "dataset API only (ignored by the server)", FOLDS,
         default=[4]),
    _map("nodes.*.val_folds", "@folds", "dataset API only; none: the train folds", FOLDS),
    _map("nodes.*.adapter_dropout", "@node_dropout", "dropout of the node's adapters "
         "(absent: 0)", "`feda2v.adapter_dropout` when every node gives the same value; "
         "differing values are named in the warning (the largest is used)"),
    _no("nodes.*.clip_adapter_learning_rate", "node_adapter", "the node's CLIP adapter rate"),
    _no("nodes.*.clip_adapter_weight_decay", "node_adapter", "the node's CLIP weight decay"),
    _no("nodes.*.t5_adapter_learning_rate", "node_adapter", "the node's T5 adapter rate"),
    _no("nodes.*.t5_adapter_weight_decay", "node_adapter", "the node's T5 weight decay"),
    _no("nodes.*.use_official_split", "official_split", "VGGSound: train/ and test/ folders "
        "(absent: None, a ratio split)"),
    _legacy("nodes.*.task_type", "fed only an unused nodes_downstream_tasks string",
            "classification"),
    _legacy("nodes.*.dataset_split", "fed only an unused nodes_datasets string", "all"),
    _legacy("nodes.*.pretext_tasks", "FedGFE argument; unused", []),
    _legacy("nodes.*.class_labels", "custom label maps, copied and unused", None),
    _legacy("nodes.*.class_remapping", "custom label remapping, copied and unused", None),
    _legacy("nodes.*.limit_samples", "unused", None),
    _legacy("nodes.*.balance_classes", "unused", False),
    _map("nodes.*.generator_class_group", "@drop", "the node's generator group", EVERY_CLASS),
    _map("nodes.*.generator_granularity", "@node_granularity", "overrides "
         "feda2v.generator_granularity for the node", "`feda2v.generator_granularity` when every "
         "node gives the same value (nodes without it: the file's feda2v value, else per_class); "
         "differing values: per_class for every node, named in the mapping note"),
    _map("nodes.*.generator_train_classes", "@drop", "classes the node's generator learns",
         EVERY_CLASS),
)

TABLE: dict[str, Key] = {k.path: k for k in KEYS if k.status != METADATA}
METADATA_KEYS: tuple[Key, ...] = tuple(k for k in KEYS if k.status == METADATA)
