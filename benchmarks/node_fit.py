"""What one node's clips teach on their own: a finished run's node (its `nodes` entry, its shard)
trains fresh adapters on its training clips alone, with the run's settings, for `--epochs`
epochs; after every tenth of them, top-1 on those training clips and on the node's own held-out
clips, CLIP / T5. A node whose adapters fit its clips while its held-out top-1 stays at chance
holds too few clips for anything to carry over; what a federation then learns comes from the
averaging. Prints one markdown table.

    python benchmarks/node_fit.py /tmp/feda2v-default-recipe/runs/italian_speech-defaults-s0-*
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from fed_a2v.config.load import load_config
from fed_a2v.encode.node_data import NodeIdentity, node_data
from fed_a2v.model.adapters import adapters_for_targets
from fed_a2v.model.evaluation import evaluate_adapters
from fed_a2v.model.pretrained import FedA2VAdapters
from fed_a2v.model.train import LocalTrainConfig, train_local

CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished run directory")
    parser.add_argument("--node", type=int, default=0, help="its partition id in the run")
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = load_config(args.run / "config.json")
    targets = FedA2VAdapters.from_pretrained(args.run).targets
    # as a simulated node of the run (`fed_a2v.federation.node.identify`): its shard
    ident = NodeIdentity(config.node(args.node), args.node, config.federation.num_clients,
                         f"node {args.node}")
    data, _ = node_data(config, ident, targets)
    adapters = adapters_for_targets(data.hidden_size, targets.tensors, config.feda2v,
                                    seed=config.experiment.seed)
    local = LocalTrainConfig(
        epochs=args.epochs, batch_size=ident.settings.batch_size or config.training.batch_size,
        stratified=config.feda2v.use_stratified_batching,
        per_class_loss=config.feda2v.use_per_class_loss,
        grad_accum_steps=config.training.gradient_accumulation_steps,
        learning_rates={name: config.adapter_lr(name) for name in adapters},
        weight_decays={name: config.adapter_weight_decay(name) for name in adapters},
        seed=config.experiment.seed, retrieval_weight=config.feda2v.retrieval_loss_weight,
        retrieval_temperature=config.feda2v.retrieval_temperature)
    every = max(args.epochs // 10, 1)
    print(f"{ident.name} of {args.run.name}: {len(data.train)} training, {len(data.test)} "
          "held-out clips; top-1, CLIP / T5")
    print("| epoch | training clips | held-out clips |\n|---|---|---|")

    def after_epoch(epoch: int) -> None:
        if (epoch + 1) % every:
            return
        cells = []
        for split, clips in (("train", data.train), ("eval", data.test)):
            scores = evaluate_adapters(adapters, clips, targets.tensors, 64, CPU, split)
            cells.append(" / ".join(f"{scores[f'{split}_{n}_top1']:.2f}" for n in adapters))
        print(f"| {epoch + 1} | " + " | ".join(cells) + " |", flush=True)

    train_local(adapters, data.train, targets.tensors, local, CPU, on_epoch=after_epoch)


if __name__ == "__main__":
    main()
