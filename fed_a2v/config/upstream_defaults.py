"""Upstream's effective defaults where FedA2V's own differ, and the real models an upstream file
runs by default: `fed_a2v.config.upstream` applies them to an upstream file, and
`fed_a2v.config.convert` writes them out, so a converted file runs as upstream's did."""

from __future__ import annotations

from typing import Any

AST = "MIT/ast-finetuned-audioset-10-10-0.4593"
FLUX = "black-forest-labs/FLUX.1-schnell"
SD = "runwayml/stable-diffusion-v1-5"
# Upstream's effective defaults that FedA2V's own differ from; written into upstream files.
UPSTREAM_DEFAULTS: dict[str, Any] = {
    "experiment.device": "auto",
    "federation.global_rounds": 100,
    "federation.local_epochs": 1,
    "federation.eval_gap": 1,
    "training.batch_size": 10,
    "training.learning_rate": 0.005,
    "training.weight_decay": 0.001,
    "dataset.use_folds": False,
    "dataset.partition": "classes",
    "dataset.train_ratio": 0.8,
    "dataset.val_ratio": 0.1,
    "dataset.stratify": True,
    "dataset.node_split_seed": 42,
    "feda2v.diffusion_type": "sd",
    "feda2v.clip_adapter_learning_rate": 1e-4,
    "feda2v.clip_adapter_weight_decay": 1e-4,
    "feda2v.t5_adapter_learning_rate": 1e-3,
    "feda2v.t5_adapter_weight_decay": 1e-3,
    "feda2v.adapter_aggregation_mode": "none",
    "feda2v.adapter_dropout": 0.0,
    "feda2v.retrieval_loss_weight": 0.0,  # upstream's loss is MSE alone
    "feda2v.audio_model_name": AST,
    "wandb.disabled": False,
    "wandb.project": "FedA2V",
}
# Written with the defaults above, so they too are explicit in `convert`'s output.
DERIVED = ("federation.num_clients", "federation.min_clients", "dataset.name",
           "feda2v.clip_model_name", "feda2v.clip_model_subfolder",
           "feda2v.clip_tokenizer_subfolder", "feda2v.t5_model_name", "feda2v.t5_model_subfolder")
