"""Images on the nodes during training (`feda2v.generate_nodes_images_frequency`): which rounds,
which pipeline, which folder, and a run in process that renders with builtin:tiny-flux."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.load import resolve
from fed_a2v.config.schema import NodeConfig
from fed_a2v.config.validate import config_from_dict
from fed_a2v.encode.text_targets import Targets
from fed_a2v.federation.feda2v_strategy import FedA2VStrategy
from fed_a2v.generate import node_images
from fed_a2v.generate.node_images import FLUX_SCHNELL, images_dir, pipeline_name, renders

from drills import LoopbackGrid, evaluated_rounds, experiment_dict, run_in_process


def test_rendering_rounds_are_every_nth_and_are_evaluation_rounds() -> None:
    config = config_from_dict({"feda2v": {"generate_nodes_images_frequency": 2}})
    assert [r for r in range(1, 7) if renders(config, r)] == [2, 4, 6]
    assert not any(renders(config_from_dict({}), r) for r in range(1, 7))  # 0: never

    targets = Targets(["a"], ["a"], {"clip": torch.zeros(1, 2), "t5": torch.zeros(1, 1, 2)})
    strategy = FedA2VStrategy(targets, lambda _: {}, eval_gap=3, render_every=2)
    strategy.last_round = 7
    assert [r for r in range(1, 8) if strategy.evaluates(r)] == [2, 3, 4, 6, 7]
    strategy.render_every = 0
    assert [r for r in range(1, 8) if strategy.evaluates(r)] == [3, 6, 7]


def test_the_pipeline_a_node_renders_with() -> None:
    builtin = config_from_dict({})
    assert pipeline_name(builtin, NodeConfig()) == "builtin:tiny-flux"
    assert pipeline_name(builtin, NodeConfig(pipeline="/models/flux")) == "/models/flux"
    in_flux = config_from_dict({"feda2v": {
        "clip_model_name": "black-forest-labs/FLUX.1-dev", "clip_model_subfolder": "text_encoder",
        "t5_model_name": "black-forest-labs/FLUX.1-dev", "t5_model_subfolder": "text_encoder_2"}})
    assert pipeline_name(in_flux, NodeConfig()) == "black-forest-labs/FLUX.1-dev"
    plain_t5 = config_from_dict({"feda2v": {"clip_model_name": "openai/clip-vit-large-patch14",
                                            "t5_model_name": "google/t5-v1_1-xxl"}})
    assert pipeline_name(plain_t5, NodeConfig()) == FLUX_SCHNELL
    chosen = config_from_dict({"feda2v": {"generation_pipeline": "me/flux"}})
    assert pipeline_name(chosen, NodeConfig()) == "me/flux"
    assert pipeline_name(chosen, NodeConfig(pipeline="node/flux")) == "node/flux"


def test_the_folder_a_node_renders_into(tmp_path: Path) -> None:
    config = config_from_dict({})
    cache = tmp_path / "cache"
    assert images_dir(config, NodeConfig(), "node 1", cache, 7, 3) == (
        cache / "images" / "7" / "node_1" / "round_3")
    assert images_dir(config, NodeConfig(), "/etc/nodes/hospital-a.json", cache, 7, 3) == (
        cache / "images" / "7" / "hospital-a" / "round_3")
    own = NodeConfig(images_dir=str(tmp_path / "mine"))
    assert images_dir(config, own, "node 1", cache, 7, 3) == tmp_path / "mine" / "7" / "round_3"
    shared = config_from_dict({"feda2v": {"images_output_dir": str(tmp_path / "all")}})
    assert images_dir(shared, NodeConfig(), "node 0", cache, 7, 1) == (
        tmp_path / "all" / "7" / "node_0" / "round_1")


def test_image_keys_are_checked() -> None:
    with pytest.raises(ConfigError, match="diffusion_type"):
        config_from_dict({"feda2v": {"generate_nodes_images_frequency": 1,
                                     "diffusion_type": "sd"}})
    with pytest.raises(ConfigError, match="below the minimum 0"):
        config_from_dict({"feda2v": {"generate_nodes_images_frequency": -1}})
    with pytest.raises(ConfigError, match="unknown key 'nodes.0.pipelin'"):
        config_from_dict({"nodes": {"0": {"pipelin": "x"}}})


def _run(tmp_path: Path, frequency: int, rounds: int) -> tuple[Path, LoopbackGrid]:
    """Two nodes on the built-in corpus and models; node 0 has its own image folder, node 1
    renders into its cache. Evaluation only after the last round, unless images ask for more."""
    experiment = experiment_dict(
        tmp_path, "images", output_dir=tmp_path / "runs",
        federation={"global_rounds": rounds, "num_clients": 2, "min_clients": 2,
                    "eval_gap": 10},
        dataset={"clips_per_class": 10},
        feda2v={"generate_nodes_images_frequency": frequency, "generate_images_per_node": 2,
                "generation_steps": 1, "generation_size": 32},
        nodes={"0": {"images_dir": str(tmp_path / "node0-images")}, "1": {}})
    experiment["experiment"]["cache_dir"] = str(tmp_path / "cache")
    grid = LoopbackGrid(2)
    node_images._PIPELINES.clear()
    return run_in_process(experiment, tmp_path / "images.json", grid), grid


def test_nodes_render_their_own_held_out_clips_each_round_in_process(tmp_path: Path) -> None:
    run_dir, grid = _run(tmp_path, frequency=1, rounds=2)
    # one-stage rounds: round 1 is evaluated in round 2's train messages, round 2 (the last) in
    # an evaluate stage of its own
    # eval_gap 10, yet rendering rounds are evaluation rounds
    assert evaluated_rounds(grid.sent) == [1, 2]

    folders = {0: tmp_path / "node0-images" / "1",
               1: tmp_path / "cache" / "images" / "1" / "node_1"}
    stems: dict[int, set[str]] = {}
    for node, folder in folders.items():
        per_round = [sorted(p.stem for p in (folder / f"round_{r}").glob("*.png"))
                     for r in (1, 2)]
        assert len(per_round[0]) == 2 and per_round[0] == per_round[1], (node, per_round)
        assert all(stem.startswith("5-") for stem in per_round[0])  # fold 5: held out
        stems[node] = set(per_round[0])
        with Image.open(next((folder / "round_1").glob("*.png"))) as image:
            assert image.size == (32, 32)
    assert not stems[0] & stems[1]  # each node its own clips
    # One pipeline for the process (both nodes, both rounds), with no text encoder.
    (pipeline,) = node_images._PIPELINES.values()
    assert pipeline.text_encoder is None and pipeline.text_encoder_2 is None

    summary = json.loads((run_dir / "summary.json").read_text())
    recorded = sorted((i["round"], i["node"], i["count"], Path(i["dir"]).name)
                      for i in summary["node_images"])
    assert recorded == [(1, "node 0", 2, "round_1"), (1, "node 1", 2, "round_1"),
                        (2, "node 0", 2, "round_2"), (2, "node 1", 2, "round_2")]
    # The images stay on the nodes: none reached the run directory (its plots only).
    assert not {p.stem for p in run_dir.rglob("*.png")} & (stems[0] | stems[1])


def test_frequency_zero_renders_nothing(tmp_path: Path) -> None:
    run_dir, grid = _run(tmp_path, frequency=0, rounds=1)
    assert not node_images._PIPELINES
    assert not (tmp_path / "node0-images").exists()
    assert not (tmp_path / "cache" / "images").exists()
    assert json.loads((run_dir / "summary.json").read_text())["node_images"] == []


def _upstream_file(tmp_path: Path, feda2v: dict) -> Path:
    path = tmp_path / "upstream.json"
    path.write_text(json.dumps({"federation": {"algorithm": "FedA2V"}, "model": {},
                                "dataset": {"name": "ESC50"}, "feda2v": feda2v,
                                "nodes": {"0": {"dataset": "ESC50"}}}))
    return path


def test_upstream_image_keys(tmp_path: Path) -> None:
    """images_output_dir is FedA2V's key; the PNG prefix and the kept splits ask for nothing
    (PNGs are named after their clips, held-out clips only); an sd file's frequency is named
    in the warning line and renders nothing."""
    config, t = resolve(_upstream_file(tmp_path, {
        "diffusion_type": "flux", "generate_nodes_images_frequency": 2,
        "images_output_dir": "output_images/x", "output_image_base_name": "pic",
        "save_generated_images_splits": ["train"]}), quiet=True)
    assert config.feda2v.generate_nodes_images_frequency == 2
    assert config.feda2v.images_output_dir == "output_images/x"
    assert {c.key for c in t.mapped} >= {"feda2v.output_image_base_name",
                                        "feda2v.save_generated_images_splits"}
    assert not t.unsupported

    config, t = resolve(_upstream_file(tmp_path, {"generate_nodes_images_frequency": 1}),
                        quiet=True)
    assert config.feda2v.diffusion_type == "sd"  # upstream's default
    assert config.feda2v.generate_nodes_images_frequency == 0
    assert "feda2v.generate_nodes_images_frequency=1 (nodes render with a FLUX" in (
        t.warning_line())
