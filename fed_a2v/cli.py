"""`fed-a2v`: validate configs and run a simulated federation on Flower's simulation engine."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open

from fed_a2v.config.convert import convert, notes
from fed_a2v.config.field_rules import ConfigError
from fed_a2v.config.load import describe, load_config, load_node_config
from fed_a2v.config.schema import Config, NodeConfig
from fed_a2v.config.validate import check_node_diffusion
from fed_a2v.data.audio import skipped_clips_note
from fed_a2v.data.builtin.instruments import INSTRUMENTS_CORPUS, SOUNDFONT_MODULE
from fed_a2v.data.builtin.speech import ESPEAK_MODULE, ESPEAK_WHEELS, SPOKEN_CORPORA
from fed_a2v.data.first_experiment import (
    DEFAULT_NODES,
    DEFAULT_ROUNDS,
    SPLITS,
    write_first_experiment,
)
from fed_a2v.data.node_corpora import (
    check_clip_files,
    check_node_shares,
    corpus_index,
    corpus_on_disk,
    node_kind,
)
from fed_a2v.encode.text_targets import compute_targets, target_prompts
from fed_a2v.extras import EXIT_CODE as EXIT_MISSING_EXTRA
from fed_a2v.extras import MissingExtra, require
from fed_a2v.generate.from_generators import (
    DEFAULT_BASE,
    DEFAULT_PER_CLASS,
    generate_from_generators,
)
from fed_a2v.generate.from_sound import GenerateSettings, embed, generate
from fed_a2v.launch.app_dir import default_config, flower_app_dir
from fed_a2v.launch.host import (
    COMPLETED,
    flower_env,
    free_port,
    setup_process,
    start_superlink,
    submit_run,
    wait_for_run,
    write_connection,
)
from fed_a2v.runs.report import write_report
from fed_a2v.runs.run_dir import last_round, new_run_dir, run_to_resume
from fed_a2v.runs.wandb_log import require_wandb
from fed_a2v.studies.batch_size import default_arms, run_study, write_study
from fed_a2v.studies.federation import ARMS as FEDERATION_ARMS
from fed_a2v.studies.federation import (
    StudySettings,
    arms_named,
    run_federation_study,
    write_federation_study,
)

log = logging.getLogger("fed_a2v.cli")

EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
# The built-in corpora that need the `corpora` extra to be made: kind -> (module, note).
CORPUS_MODULES = {**{g.name: (ESPEAK_MODULE, ESPEAK_WHEELS) for g in SPOKEN_CORPORA},
                  INSTRUMENTS_CORPUS.name: (SOUNDFONT_MODULE, "")}


def _load(args_config: str, rounds: int | None = None, num_nodes: int | None = None,
          output_dir: str | None = None, overrides: list[str] | None = None,
          strict: bool = False) -> Config:
    config = load_config(args_config, overrides or (), strict)
    if rounds is not None:
        config.federation.global_rounds = rounds
    if num_nodes is not None:
        config.federation.num_clients = num_nodes
        config.federation.min_clients = min(config.federation.min_clients, num_nodes)
    if output_dir is not None:
        config.experiment.output_dir = output_dir
    config.make_paths_absolute()
    # Every audio file the corpora name is there, before anything starts.
    check_clip_files(config, {f"{args_config}: 'nodes.{i}'": config.node(i)
                              for i in range(config.federation.num_clients)}, args_config)
    return config


def require_node_extras(config: Config, nodes: Iterable[NodeConfig]) -> None:
    """The extras that `nodes`, run on this machine, need beyond the core: `corpora` to make a
    built-in spoken or instruments corpus not yet on disk, `generate` to render images."""
    for node in nodes:
        try:
            kind = node_kind(config, node)
            made = kind not in CORPUS_MODULES or corpus_on_disk(config, node.dataset_path, kind)
        except ConfigError:
            continue  # check_node_shares says what is wrong, with the file and key
        if not made:
            module, note = CORPUS_MODULES[kind]
            require("corpora", module, what=f"the built-in {kind} corpus", note=note)
    if config.feda2v.generate_nodes_images_frequency:
        require("generate", what="images on the nodes ('feda2v.generate_nodes_images_frequency')")


def cmd_validate(args: argparse.Namespace) -> int:
    """Check the config, a node's JSON, and, where the corpus is on disk, every node's share.
    With --node, also the extras that node needs here; without, the server's (`wandb`)."""
    config = load_config(args.config, args.overrides, args.strict)
    nodes = {f"{args.config}: 'nodes.{k}'": (v, int(k), config.federation.num_clients)
             for k, v in config.nodes.items()}
    if args.node:
        node = load_node_config(args.node)
        check_node_diffusion(config, node, args.node)
        nodes = {args.node: (node, *node.own_shard(args.node))}
        require_node_extras(config, [node])
    else:
        require_wandb(config)
    check_clip_files(config, {where: node for where, (node, *_) in nodes.items()}, args.config)
    found = check_node_shares(config, nodes, args.config)
    print(f"{args.config}: ok: {describe(config)}" + "".join(f"; {f}" for f in found))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    # SIGTERM unwinds like Ctrl-C, so the SuperLink and its simulation are stopped with us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if args.resume is not None:
        run_dir = run_to_resume(args.resume)
        resolved = run_dir / "config.json"
        config = _load(str(resolved))
    else:
        config = _load(args.config, args.rounds, args.num_nodes, args.output_dir,
                       args.overrides, args.strict)
    # What the run needs beyond the core, said here, not minutes later in the ServerApp.
    require("simulation", what="`fed-a2v simulate`", note="Flower's simulation engine")
    require_wandb(config)
    num = config.federation.num_clients
    require_node_extras(config, (config.node(i) for i in range(num)))
    source = args.resume or args.config
    # Generates the built-in corpus once, before nodes start.
    check_node_shares(config, {f"{source}: 'nodes.{i}'": (config.node(i), i, num)
                               for i in range(num)}, source, generate=True)
    if not args.resume:
        run_dir = new_run_dir(config)
        run_dir.mkdir(parents=True)
        resolved = run_dir / "config.json"
        resolved.write_text(json.dumps(config.to_dict(), indent=2))
    with tempfile.TemporaryDirectory(prefix="feda2v-flwr-") as home, flower_app_dir() as app:
        flwr_home = Path(home)
        env = flower_env(flwr_home)
        port = free_port()
        write_connection(flwr_home, "feda2v-sim", f"127.0.0.1:{port}")
        superlink = start_superlink(env, port, run_dir / "superlink.log", simulation=True)
        entry: dict = {}
        interrupted = False
        try:
            run_id = submit_run(
                app, "feda2v-sim", env,
                run_config={"config": str(resolved), "run-dir": str(run_dir),
                            "resume": bool(args.resume)},
                federation_config={"num-supernodes": config.federation.num_clients,
                                   "client-resources-num-cpus": args.cpus_per_node},
            )
            log.info("run %d started; logs follow (also in %s)", run_id, run_dir)
            # Its own session: Ctrl-C reaches this process alone, which stops the stream.
            stream = subprocess.Popen(["flwr", "log", str(run_id), "feda2v-sim", "--stream"],
                                      env=env, stdout=sys.stderr, stderr=sys.stderr,
                                      start_new_session=True)
            try:
                entry = wait_for_run(run_id, "feda2v-sim", env, timeout=args.timeout)
                try:
                    stream.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            finally:
                stream.terminate()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            # Interrupted: stop the simulation now, not after the round in progress; a second
            # Ctrl-C must not cut the stop short and leave Flower's or Ray's processes behind.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            superlink.stop(timeout=15 if entry else 1)
    if interrupted:
        print(f"stopped after round {last_round(run_dir)} of "
              f"{config.federation.global_rounds}; resume with: fed-a2v simulate --resume "
              f"{run_dir}", file=sys.stderr)
        return EXIT_INTERRUPTED
    summary_path = run_dir / "summary.json"
    skipped = skipped_clips_note(json.loads(summary_path.read_text()).get("skipped_files", [])
                                 if summary_path.exists() else [])
    if skipped:
        print(f"warning: {skipped}", file=sys.stderr)
    if entry.get("status") != COMPLETED:
        log.error("run %d ended %s: %s", run_id, entry.get("status"), entry.get("status-details"))
        return 1
    print(run_dir)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Write (or print) the experiment in FedA2V's own format, with a notes file beside it."""
    native, translation = convert(args.config, args.overrides)
    text = json.dumps(native, indent=2) + "\n"
    stem = Path(args.config).stem
    if args.out == "-":
        sys.stdout.write(text)
        shown, notes_file = "stdout", Path(f"{stem}.fed-a2v.notes.md")
    else:
        out = Path(args.out or f"{stem}.fed-a2v.json")
        out.write_text(text, encoding="utf-8")
        shown, notes_file = str(out), out.with_name(out.name + ".notes.md")
    notes_file.write_text(notes(translation, shown), encoding="utf-8")
    print(f"{shown}: FedA2V's format; what changed, and why: {notes_file}", file=sys.stderr)
    return 0


def _add_overrides(p: argparse.ArgumentParser, strict: bool = True) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the config, e.g. --set dataset.path=/data/ESC-50 "
                        "(VALUE is read as JSON when it parses, else as a string); repeatable")
    if strict:
        p.add_argument("--strict", action="store_true",
                       help="keys FedA2V does not support are errors, not a warning")


def cmd_targets(args: argparse.Namespace) -> int:
    """Compute the text targets of a config's corpus into a file, for `feda2v.targets_file`."""
    config = _load(args.config)
    targets = compute_targets(config, *target_prompts(corpus_index(config), config))
    out = Path(args.out).resolve()
    targets.save(out)
    print(f"{out}: {len(targets.names)} targets, "
          + ", ".join(f"{k} {tuple(v.shape)}" for k, v in targets.tensors.items()))
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    """The batch-size study on the config's data; writes study.md, study.json and PNGs."""
    require("plots", "matplotlib", what="`fed-a2v study batch-size`")
    torch.set_num_threads(args.threads)
    config = _load(args.config)
    out = Path(args.out or Path(config.experiment.output_dir) / "study-batch-size").resolve()
    study = run_study(config, default_arms(tuple(args.batch_sizes)),
                      list(range(args.seeds)), args.epochs)
    print(write_study(study, out))
    return 0


def cmd_study_federation(args: argparse.Namespace) -> int:
    """The federation study on the config's data; writes study.md, study.json and a PNG."""
    arms = arms_named(args.arms)  # an unknown name fails before any work
    require("plots", "matplotlib", what="`fed-a2v study federation`")
    torch.set_num_threads(args.threads)
    config = _load(args.config, overrides=args.overrides, strict=args.strict)
    out = Path(args.out or Path(config.experiment.output_dir) / "study-federation").resolve()
    settings = StudySettings(rounds=args.rounds, seeds=list(range(args.seeds)),
                             proximal_mu=args.proximal_mu)
    study = run_federation_study(config, arms, settings, Path(args.work or out / "work"))
    print(write_federation_study(study, out))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Plots and report.md for a run directory (a finished run has them already)."""
    require("plots", "matplotlib", what="`fed-a2v report`")
    print(write_report(args.run_dir))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """Images from audio clips, or from the nodes' generators (`--generators`), with the
    adapters and a FLUX pipeline (no text encoder)."""
    require("generate", what="`fed-a2v generate`")
    if args.audio and (args.generator_base is not None or args.per_class is not None):
        raise ConfigError("--generator-base and --per-class go with --generators, not --audio")
    settings = GenerateSettings(
        pipeline=args.pipeline, steps=args.steps, guidance=args.guidance,
        height=args.height or args.size, width=args.width or args.size, seed=args.seed,
        batch_size=1 if args.low_memory else args.batch_size, device=args.device,
        dtype="bf16" if args.low_memory else args.dtype,
        cpu_offload=args.cpu_offload, compare_text=args.compare_text,
        score_with=args.score_with, cache_dir=args.cache_dir)
    if args.generators:
        report = generate_from_generators(
            args.adapters, args.generators, args.out, settings,
            base=args.generator_base or DEFAULT_BASE,
            per_class=DEFAULT_PER_CLASS if args.per_class is None else args.per_class)
    else:
        report = generate(args.adapters, args.audio, args.out, settings)
    totals = report["totals"]
    print(f"{Path(args.out).resolve()}: {totals['images']} images, gallery.png, gallery.md, "
          f"generate.json; {totals['seconds_per_image']:.3f} s per image on {args.device}"
          + (f"; {len(report['skipped'])} clips skipped" if report["skipped"] else ""))
    if report["scores"]:
        for kind in ("audio", "text"):
            if kind in report["scores"]:
                s = report["scores"][kind]
                print(f"{kind} images: accuracy {s['accuracy']:.3f}, balanced accuracy "
                      f"{s['balanced_accuracy']:.3f}, macro F1 {s['macro_f1']:.3f}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    """The conditioning tensors of audio clips, for generating elsewhere."""
    out = embed(args.adapters, args.audio, args.out, args.device, args.cache_dir)
    with safe_open(str(out), "pt") as f:
        shapes = ", ".join(f"{k} {tuple(f.get_slice(k).get_shape())}" for k in f.keys())
    print(f"{out.resolve()}: {shapes}")
    return 0


AUDIO_HELP = ("audio files, folders (searched recursively) or CSV manifests (path,label); a "
              "clip's class is its label in a manifest given, else in a CSV manifest or ESC-50 "
              "metadata in or up to two folders above its folder or the folder given")


def _add_audio_args(p: argparse.ArgumentParser,
                    audio: argparse._MutuallyExclusiveGroup | None = None) -> None:
    """The adapters, the audio (`--audio`, added to `audio`: a group, or `p` itself, then
    required), the device and the token cache."""
    p.add_argument("adapters", help="a run directory, its final/ folder, an adapters package "
                                    "folder or a hub id")
    (audio or p).add_argument("--audio", nargs="+", required=audio is None, metavar="PATH",
                              help=AUDIO_HELP)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--cache-dir", help="token cache (default: $FEDA2V_CACHE_DIR or "
                                       "~/.cache/fed_a2v, as in training)")


def cmd_new(args: argparse.Namespace) -> int:
    """Write a first experiment file from a corpus on disk; print what and the next commands."""
    template = json.loads(default_config().read_text())  # configs/quickstart.json
    made = write_first_experiment(args.corpus, args.out, template, args.nodes, args.split,
                                  args.rounds, args.name, args.force)
    print("\n".join(made.report()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fed-a2v", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check an experiment config (and a node's JSON)")
    p.add_argument("config")
    p.add_argument("--node", help="a node's own JSON file")
    _add_overrides(p)
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("simulate", help="run a simulated federation (Flower simulation engine)")
    p.add_argument("--config", default=str(default_config()))
    p.add_argument("--num-nodes", type=int, help="simulated nodes (default: num_clients)")
    p.add_argument("--rounds", type=int, help="federated rounds (default: global_rounds)")
    p.add_argument("--output-dir", help="where run directories go (default: output_dir)")
    p.add_argument("--cpus-per-node", type=int, default=1,
                   help="CPU cores Ray reserves per simulated node (default: 1)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds before giving up")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a stopped run after its last finished round (its config)")
    _add_overrides(p)
    p.set_defaults(func=cmd_simulate)
    p = sub.add_parser("convert", help="write an experiment (e.g. upstream's) in FedA2V's format")
    p.add_argument("config")
    p.add_argument("--out", help="the JSON file to write (default: <config stem>.fed-a2v.json "
                                 "here; '-': stdout); notes go beside it (<out>.notes.md; "
                                 "stdout: <config stem>.fed-a2v.notes.md)")
    _add_overrides(p, strict=False)
    p.set_defaults(func=cmd_convert)
    p = sub.add_parser("targets", help="compute text targets once, for offline use")
    p.add_argument("config")
    p.add_argument("--out", required=True, help="a .safetensors file to write")
    p.set_defaults(func=cmd_targets)
    studies = sub.add_parser("study", help="experiments on FedA2V's own choices").add_subparsers(
        dest="kind", required=True)
    p = studies.add_parser("batch-size", help="batch size, stratified batching, per-class loss")
    p.add_argument("--config", default=str(default_config()))
    p.add_argument("--out", help="output folder (default: <output_dir>/study-batch-size)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, default=3, help="repeats with seeds 0..N-1")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16, 32])
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.set_defaults(func=cmd_study)
    p = studies.add_parser("federation", help="centralized vs FedAvg (IID, non-IID), FedProx "
                                              "and local-only, as real in-process federations")
    p.add_argument("--config", default=str(default_config()))
    p.add_argument("--out", help="output folder (default: <output_dir>/study-federation)")
    p.add_argument("--work", help="runs, configs and generated corpora (default: <out>/work)")
    p.add_argument("--seeds", type=int, default=3, help="repeats with seeds 0..N-1")
    p.add_argument("--rounds", type=int, help="rounds per run (default: global_rounds)")
    p.add_argument("--arms", nargs="+", metavar="ARM",
                   help="arms to run (default: all): " + ", ".join(FEDERATION_ARMS))
    p.add_argument("--proximal-mu", type=float, default=0.01, help="FedProx's μ (default 0.01)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    _add_overrides(p)
    p.set_defaults(func=cmd_study_federation)
    p = sub.add_parser("report", help="PNG plots and report.md for a run directory")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("generate", help="images from audio clips, or from the nodes' "
                                        "generators, with the trained adapters and a FLUX "
                                        "pipeline")
    drawn = p.add_mutually_exclusive_group(required=True)
    _add_audio_args(p, drawn)
    drawn.add_argument("--generators", metavar="DIR",
                       help="instead of audio: the nodes' generator files "
                            "(<base>_node<id>_class_<c>_round_<r>.pt; each node's latest "
                            "round), merged per class; --per-class samples of each class")
    p.add_argument("--generator-base", metavar="NAME",
                   help="the generator files' prefix (default: generator, as "
                        "feda2v.generator_checkpoint_base_name)")
    p.add_argument("--per-class", type=int, metavar="N",
                   help="with --generators: images per class (default: 2)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--pipeline", help="builtin:tiny-flux, a FLUX-layout folder or a hub id "
                                      "(default: the FLUX repository the T5 targets came from)")
    p.add_argument("--steps", type=int, default=1, help="denoising steps (default: 1, as "
                                                       "FLUX.1-schnell ran upstream)")
    p.add_argument("--guidance", type=float, default=0.0, help="guidance scale (default: 0)")
    p.add_argument("--size", type=int, default=512, help="height and width (default: 512)")
    p.add_argument("--height", type=int, help="image height (default: --size)")
    p.add_argument("--width", type=int, help="image width (default: --size)")
    p.add_argument("--seed", type=int, default=0, help="clip i is drawn with seed + i")
    p.add_argument("--batch-size", type=int, default=4, help="images per pipeline call")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="the pipeline's precision (default: fp32; bf16 on a GPU for FLUX.1)")
    p.add_argument("--cpu-offload", action="store_true",
                   help="keep each pipeline component on the CPU until it runs (CUDA only)")
    p.add_argument("--low-memory", action="store_true",
                   help="upstream's generate_low_memomy_footprint: the pipeline in bf16 and one "
                        "image per pipeline call (overrides --dtype and --batch-size)")
    p.add_argument("--compare-text", action="store_true",
                   help="also draw each clip's class prompt from the stored targets, same seed")
    p.add_argument("--score-with", metavar="CLIP_ID_OR_DIR",
                   help="classify the images zero-shot with this CLIP model (e.g. "
                        "openai/clip-vit-base-patch32): accuracy, balanced accuracy, macro F1")
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser("embed", help="the conditioning tensors of audio clips, in one "
                                     ".safetensors file")
    _add_audio_args(p)
    p.add_argument("--out", required=True, help="a .safetensors file to write")
    p.set_defaults(func=cmd_embed)
    p = sub.add_parser("new", help="write a first experiment file from your own audio corpus")
    p.add_argument("corpus", help="a CSV manifest (path,label[,caption,split,fold]) or a folder "
                                  "holding one, an ESC-50 folder (meta/esc50.csv), or class "
                                  "folders (<class>/*.wav|flac|ogg|mp3)")
    p.add_argument("--out", help="the JSON file to write (default: <name>.json here)")
    p.add_argument("--nodes", type=int, default=DEFAULT_NODES,
                   help=f"simulated nodes (default: {DEFAULT_NODES})")
    p.add_argument("--split", choices=SPLITS, default="iid",
                   help="iid: every node every class, on disjoint shards; classes: classes "
                        "dealt round-robin, each node its own (default: iid)")
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                   help=f"federated rounds (default: {DEFAULT_ROUNDS})")
    p.add_argument("--name", help="experiment.name, the run directories' prefix (default: the "
                                  "corpus folder's name)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=cmd_new)
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_process()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except MissingExtra as err:  # one line: what needs which extra, and how to install it
        print(f"error: {err}", file=sys.stderr)
        return EXIT_MISSING_EXTRA
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
