"""Rules that span several keys of an experiment, checked once it is parsed."""

from __future__ import annotations

import json
from typing import Any

from fed_a2v.config.field_rules import ConfigError, suggest
from fed_a2v.config.parse import build
from fed_a2v.config.schema import BUILTIN_CLASSES, DATASETS, Config, NodeConfig
from fed_a2v.config.strategy_options import check_strategy


def config_from_dict(data: dict[str, Any], source: str = "<config>") -> Config:
    config = build(Config, data, "", source)
    check_consistency(config, source)
    return config


def check_node_diffusion(config: Config, node: NodeConfig, where: str) -> None:
    """A node's `diffusion_type`, if set, is the experiment's: every node trains (and the
    server averages) the adapters of `feda2v.diffusion_type`, as upstream builds them."""
    wanted = config.feda2v.diffusion_type
    if node.diffusion_type is not None and node.diffusion_type != wanted:
        raise ConfigError(
            f"{where}: 'diffusion_type' is {json.dumps(node.diffusion_type)} but "
            f"'feda2v.diffusion_type' is {json.dumps(wanted)}; a federation cannot mix sd and "
            f"flux nodes (their adapters differ and cannot be averaged): use "
            f"{json.dumps(wanted)} or leave the node's key out")


def check_builtin_classes(config: Config, source: str) -> None:
    """'dataset.num_classes' is at most the classes of each built-in corpus the run reads."""
    kinds = [config.dataset.name, *(node.dataset for node in config.nodes.values())]
    for kind in dict.fromkeys(k for k in kinds if k in BUILTIN_CLASSES):
        check_num_classes(kind, BUILTIN_CLASSES[kind], config.dataset.num_classes,
                          f"{source}: 'dataset.num_classes'")


def check_num_classes(corpus: str, classes: int, num_classes: int, where: str) -> None:
    """ConfigError unless the built-in `corpus`, of `classes` classes, has `num_classes`;
    `where` names the key."""
    if num_classes > classes:
        raise ConfigError(f"{where}: {num_classes} is above the {classes} classes of the "
                          f"built-in {corpus} corpus")


def check_consistency(config: Config, source: str) -> None:
    """Rules that span several keys."""
    try:
        config.dataset.prompt_template.format(label="dog")
    except (KeyError, IndexError, ValueError) as err:
        raise ConfigError(f"{source}: 'dataset.prompt_template' may use only {{label}}: "
                          f"{config.dataset.prompt_template!r} ({err!r})") from err
    if config.feda2v.adapter_load_checkpoint and config.feda2v.adapter_aggregation_mode == "none":
        raise ConfigError(
            f"{source}: 'feda2v.adapter_load_checkpoint' cannot be true with "
            "'feda2v.adapter_aggregation_mode' \"none\": a standalone run has no global "
            "adapters to start from (each node builds and keeps its own); use \"avg\" or "
            "\"weighted_average\", or set adapter_load_checkpoint to false")
    if config.feda2v.generate_nodes_images_frequency and config.feda2v.diffusion_type != "flux":
        raise ConfigError(
            f"{source}: 'feda2v.generate_nodes_images_frequency' renders with a FLUX pipeline, "
            f"which needs the flux adapters, but 'feda2v.diffusion_type' is "
            f"{json.dumps(config.feda2v.diffusion_type)}: use \"flux\" or set the frequency to 0")
    fed = config.federation
    if fed.num_clients is None:
        fed.num_clients = len(config.nodes) or 3
    if fed.min_clients is None:
        fed.min_clients = min(2, fed.num_clients)
    check_builtin_classes(config, source)
    for name in config.dataset.paths:
        if name not in DATASETS:
            raise ConfigError(f"{source}: 'dataset.paths.{name}': no such dataset"
                              f"{suggest(name, list(DATASETS))}; use one of {', '.join(DATASETS)}")
    if fed.min_clients > fed.num_clients:
        raise ConfigError(
            f"{source}: 'federation.min_clients' ({fed.min_clients}) exceeds "
            f"'federation.num_clients' ({fed.num_clients})"
        )
    check_strategy(fed.strategy, fed.strategy_options, fed.min_clients,
                   config.feda2v.adapter_aggregation_mode, source)
    check_privacy(config, source)
    for node_id, node in config.nodes.items():
        check_node_diffusion(config, node, f"{source}: 'nodes.{node_id}'")
        if node.selected_classes is not None and node.excluded_classes is not None:
            raise ConfigError(
                f"{source}: 'nodes.{node_id}': use either 'selected_classes' or "
                "'excluded_classes', not both"
            )
        if node.node_split_id is not None and node.num_nodes is not None:
            if node.node_split_id >= node.num_nodes:
                raise ConfigError(
                    f"{source}: 'nodes.{node_id}.node_split_id' ({node.node_split_id}) must "
                    f"be below 'num_nodes' ({node.num_nodes})"
                )


def sampled_nodes(config: Config) -> int:
    """How many nodes a round samples when all `federation.num_clients` are connected."""
    fed = config.federation
    return min(fed.num_clients, max(int(fed.num_clients * fed.join_ratio), fed.min_clients))


def check_privacy(config: Config, source: str) -> None:
    """What the `privacy` section needs from the rest of the config (fed_a2v.federation.privacy)."""
    dp, fed = config.privacy, config.federation
    if dp.mechanism == "none":
        return
    where = f"{source}: 'privacy.mechanism' {json.dumps(dp.mechanism)}"
    mode = config.feda2v.adapter_aggregation_mode
    if mode == "kd":
        raise ConfigError(
            f"{where} cannot protect 'feda2v.adapter_aggregation_mode' \"kd\": each node sends "
            "the server a generator of every class it holds (its clips' mean token sequence "
            "and leading directions), which reveals far more about its clips than its adapters "
            "do, and no noise covers them; use \"avg\" with privacy, or KD without it")
    if mode != "avg":
        why = ("standalone nodes exchange no adapters, so there is nothing to protect with "
               "noise" if mode == "none" else
               "weighting by examples lets a node with many clips move the mean by more than "
               "clipping_norm / nodes, the bound the noise is calibrated to")
        raise ConfigError(f"{where} needs 'feda2v.adapter_aggregation_mode' \"avg\" (every "
                          f"clipped update weighs the same), not {json.dumps(mode)}: {why}")
    if fed.transport_dtype != "fp32":
        raise ConfigError(
            f"{where} needs 'federation.transport_dtype' \"fp32\", not "
            f"{json.dumps(fed.transport_dtype)}: nodes clip the update their reply carries, and "
            "re-encoding a clipped update in a compact dtype rounds it back over the clipping "
            "norm that the noise is calibrated to")
    if fed.baselines:
        raise ConfigError(
            f"{where} needs 'federation.baselines' false: the ridge baselines have every node "
            "send XᵀX and class sums of its features, which no noise protects")
    if fed.strategy not in ("FedAvg", "FedProx"):
        raise ConfigError(
            f"{where} needs 'federation.strategy' \"FedAvg\" or \"FedProx\", not "
            f"{json.dumps(fed.strategy)}: the noise is calibrated to the plain mean of the "
            "clipped updates, which other strategies replace (robust statistics) or rescale "
            "(server optimizers)")
    if dp.delta >= 1 / fed.num_clients:
        raise ConfigError(
            f"{source}: 'privacy.delta' ({dp.delta:g}) must be below 1 / "
            f"'federation.num_clients' ({1 / fed.num_clients:.3g}): a mechanism that publishes "
            "one node's update outright with probability δ would otherwise qualify")
    if dp.mechanism == "client_adaptive_clipping" and dp.noise_multiplier > 0:
        count_stddev = dp.clipped_count_stddev or sampled_nodes(config) / 20
        if dp.noise_multiplier >= 2 * count_stddev:
            raise ConfigError(
                f"{source}: 'privacy.clipped_count_stddev' ({count_stddev:g}"
                f"{'' if dp.clipped_count_stddev else ', the default: sampled nodes / 20'}) "
                f"must exceed 'privacy.noise_multiplier' / 2 ({dp.noise_multiplier / 2:g}): "
                "adaptive clipping spends part of the noise budget on the count of clipped "
                "updates, and this count noise leaves none for the updates")
