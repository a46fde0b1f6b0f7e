"""Local training with the token cache versus re-encoding every epoch.

The same node, data, targets and epochs of local training, two ways:
  cached     - the frozen AST encodes each clip once (into the on-disk cache), epochs read it;
  re-encode  - every epoch loads the audio and runs the AST again, as without a cache.
Writes the fragment `--name` (per-epoch seconds of each, their ratio, the one-time encoding)
and prints it.

    .venv/bin/python benchmarks/encode_cache.py [--config configs/quickstart.json] [--epochs 10]
        [--audio-model DIR | --full-size-ast] [--max-clips N] [--threads N] [--name NAME]
        [--out-dir benchmarks/out]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from fragments import OUT_DIR, row, write_fragment
from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

from fed_a2v.config.load import load_config
from fed_a2v.data.audio import load_audio
from fed_a2v.data.node_corpora import open_corpus
from fed_a2v.data.splits import split_for_node
from fed_a2v.encode.encoders import AudioEncoder
from fed_a2v.encode.node_data import Encoding, NodeIdentity, encoded_set
from fed_a2v.encode.text_targets import targets_for
from fed_a2v.model.adapters import adapter_names, adapters_for_targets
from fed_a2v.model.train import LocalTrainConfig, train_local


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.json")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--node", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--audio-model", help="override feda2v.audio_model_name (a local dir)")
    parser.add_argument("--full-size-ast", action="store_true",
                        help="a full-size AST (AudioSet config, random weights) saved to a "
                             "temporary dir and loaded from there, as a real one would be")
    parser.add_argument("--max-clips", type=int, help="use only the first N training clips")
    parser.add_argument("--name", help="fragment name (default: encode_cache, "
                                       "encode_cache_full_ast with --full-size-ast)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    name = args.name or ("encode_cache_full_ast" if args.full_size_ast else "encode_cache")
    torch.set_num_threads(args.threads)

    config = load_config(args.config)
    cfg = config.feda2v
    if args.audio_model:
        cfg.audio_model_name = args.audio_model
    with tempfile.TemporaryDirectory() as cache:
        config.experiment.cache_dir = cache
        if args.full_size_ast:
            cfg.audio_model_name = str(Path(cache) / "ast-full-size")
            ASTModel(ASTConfig()).save_pretrained(cfg.audio_model_name)
            ASTFeatureExtractor().save_pretrained(cfg.audio_model_name)
        corpus = open_corpus(config)
        targets = targets_for(config, corpus)
        ident = NodeIdentity(config.node(args.node), args.node, config.federation.num_clients,
                             f"node {args.node}")
        clips = split_for_node(corpus, ident.settings, ident.index, ident.num_nodes, config).train
        clips = clips[:args.max_clips] if args.max_clips else clips
        rows = {name: i for i, name in enumerate(targets.names)}
        names = adapter_names(cfg)
        local = LocalTrainConfig(
            epochs=args.epochs, batch_size=config.training.batch_size,
            stratified=cfg.use_stratified_batching, per_class_loss=cfg.use_per_class_loss,
            grad_accum_steps=config.training.gradient_accumulation_steps,
            learning_rates={a: config.adapter_lr(a) for a in names},
            weight_decays={a: config.adapter_weight_decay(a) for a in names}, seed=0)
        cpu = torch.device("cpu")

        start = time.perf_counter()
        encoding = Encoding(config, ident)
        kept, arrays = encoding.encode(clips)
        data = encoded_set(kept, arrays, corpus, rows, int(arrays[0].shape[-1]))
        encode_s = time.perf_counter() - start
        cached_forwards = encoding.counts["encoded-clips"]
        adapters = adapters_for_targets(data.tokens.arrays[0].shape[-1], targets.tensors, cfg)
        start = time.perf_counter()
        train_local(adapters, data, targets.tensors, local, cpu)
        cached_epoch_s = (time.perf_counter() - start) / args.epochs

        encoder = AudioEncoder.load(cfg.audio_model_name, "cpu", config.experiment.dtype)
        adapters = adapters_for_targets(encoder.hidden_size, targets.tensors, cfg)
        forwards = 0
        start = time.perf_counter()
        for epoch in range(args.epochs):
            waves = [load_audio(c.path, encoder.settings.sampling_rate,
                                config.dataset.clip_seconds) for c in kept]
            tokens = encoder.encode(waves)
            forwards += len(waves)
            fresh = encoded_set(kept, list(tokens.numpy()), corpus, rows, encoder.hidden_size)
            train_local(adapters, fresh, targets.tensors,
                        replace(local, epochs=1, seed=epoch), cpu)
        reencode_epoch_s = (time.perf_counter() - start) / args.epochs
        token_shape = tuple(arrays[0].shape)

    ratio = reencode_epoch_s / cached_epoch_s
    what = "full-size AST (AudioSet config)" if args.full_size_ast else cfg.audio_model_name
    rows_out = [
        row(f"one cached epoch, {what}", cached_epoch_s, "s"),
        row(f"one re-encoding epoch, {what}", reencode_epoch_s, "s", f"{ratio:.1f}x cached"),
        row("one-time encoding into the cache (AST load + forwards)", encode_s, "s",
            f"{encode_s / reencode_epoch_s:.2f}x one re-encoding epoch"),
        row(f"encoder forwards over {args.epochs} epochs, cached", cached_forwards),
        row(f"encoder forwards over {args.epochs} epochs, re-encoding", forwards),
    ]
    notes = [f"{len(kept)} training clips of node {args.node} ({args.config}), tokens "
             f"{token_shape} per clip, {args.epochs} epochs, batch "
             f"{config.training.batch_size}, {args.threads} torch thread(s).",
             "A re-encoding epoch loads the audio, runs the AST on every clip and trains one "
             "epoch; a cached epoch trains on tokens already in memory from the on-disk cache."]
    command = "python benchmarks/encode_cache.py" + (
        f" --full-size-ast --max-clips {args.max_clips} --epochs {args.epochs}"
        if args.full_size_ast else "")
    write_fragment(name, "Token cache: one cached epoch vs one re-encoding epoch", command,
                   rows_out, notes, args.out_dir)


if __name__ == "__main__":
    main()
