"""Real-width encoding and training on one device (a GPU where there is one).

The full-size AST (AudioSet config, random weights: the real one's cost) encodes batches of
clips, and FedA2V's adapters at FLUX widths (CLIP 768, T5 17 x 4096) train with FedA2V's own
`train_local` on real-shape tokens (1214 x 768 per clip) and random targets. It times:
  - the AST forward per clip, fp32 and bf16 autocast;
  - one cached epoch (tokens from host memory) against one re-encoding epoch (AST forward of
    every clip, then the same epoch), as a node with and without the token cache pays it;
  - the peak device memory of training.
Writes the fragment `gpu` (or `--name`) and prints it; needs neither audio files nor Flower.

    python benchmarks/gpu.py [--device cuda] [--clips 256] [--batch-size 16] [--epochs 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from fragments import ESC50_CLASSES, OUT_DIR, row, write_fragment
from transformers import ASTConfig, ASTModel

from fed_a2v.config.feda2v_section import FedA2VConfig
from fed_a2v.encode.encoded_set import EncodedSet
from fed_a2v.model.adapters import build_adapters
from fed_a2v.model.train import LocalTrainConfig, train_local

NUM_CLASSES = 10
FRAMES, MEL_BINS = 1024, 128  # the AudioSet AST's input: 10.24 s of 10 ms frames


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def encode(ast: ASTModel, feats: torch.Tensor, batch: int, device: torch.device,
           bf16: bool) -> torch.Tensor:
    """Tokens `(N, T, 768)` on the host in fp16 (as the cache keeps them)."""
    out = []
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
        for i in range(0, len(feats), batch):
            hidden = ast(input_values=feats[i:i + batch].to(device)).last_hidden_state
            out.append(hidden.to("cpu", torch.float16))
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--encode-batch", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--name", default="gpu")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 in the fp32 rows

    ast = ASTModel(ASTConfig()).eval().to(device)
    feats = torch.randn(args.clips, FRAMES, MEL_BINS)
    encode(ast, feats[:args.encode_batch], args.encode_batch, device, False)  # warm-up
    encode(ast, feats[:args.encode_batch], args.encode_batch, device, True)
    fp32_s = timed(lambda: encode(ast, feats, args.encode_batch, device, False), device)
    bf16_s = timed(lambda: encode(ast, feats, args.encode_batch, device, True), device)
    tokens = encode(ast, feats, args.encode_batch, device, False)

    cfg = FedA2VConfig()
    labels = torch.arange(args.clips) % NUM_CLASSES
    targets = {"clip": torch.randn(NUM_CLASSES, 768),
               "t5": torch.randn(NUM_CLASSES, cfg.t5_max_length, 4096)}
    data = EncodedSet(tokens, labels)
    local = LocalTrainConfig(epochs=1, batch_size=args.batch_size, stratified=True,
                             per_class_loss=True, grad_accum_steps=1,
                             learning_rates={"clip": 3e-3, "t5": 5e-3},
                             weight_decays={"clip": 1e-4, "t5": 1e-4}, seed=0)
    adapters = build_adapters(768, 768, 4096, cfg, target_rows=ESC50_CLASSES)
    train_local(adapters, data, targets, local, device)  # warm-up (allocator, kernels)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cached_s = timed(lambda: train_local(adapters, data, targets,
                                         replace(local, epochs=args.epochs), device),
                     device) / args.epochs
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None

    def reencoding_epoch() -> None:
        fresh = EncodedSet(encode(ast, feats, args.encode_batch, device, False), labels)
        train_local(adapters, fresh, targets, local, device)

    reencode_s = timed(reencoding_epoch, device)
    params = sum(p.numel() for a in adapters.values() for p in a.parameters())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    rows = [
        row(f"AST forward per clip, fp32, batch {args.encode_batch}", fp32_s / args.clips * 1e3,
            "ms", f"{args.clips / fp32_s:.0f} clips/s"),
        row(f"AST forward per clip, bf16 autocast, batch {args.encode_batch}",
            bf16_s / args.clips * 1e3, "ms", f"{fp32_s / bf16_s:.1f}x the speed of fp32"),
        row(f"one cached epoch, {args.clips} clips, FLUX-width adapters", cached_s, "s",
            f"{args.clips / cached_s:.0f} clips/s"),
        row(f"one re-encoding epoch, {args.clips} clips (fp32 AST + the same epoch)", reencode_s,
            "s", f"{reencode_s / cached_s:.1f}x cached"),
        row("peak device memory while training", None if peak is None else peak / 2**20, "MiB"),
    ]
    notes = [f"Measured on {name} with torch {torch.__version__}: full-size AST with random "
             f"weights, {args.clips} clips of {FRAMES} x {MEL_BINS} features, tokens "
             f"{tuple(tokens.shape[1:])} kept in host memory in fp16 as the cache holds them; "
             f"adapters at FLUX widths ({params / 1e6:.2f} M parameters), batch "
             f"{args.batch_size}, stratified batching and the per-class loss, AdamW, fp32.",
             "A cached epoch moves each batch of tokens from host memory to the device; a "
             "re-encoding epoch runs the AST over every clip first."]
    write_fragment(args.name, "Real-width encoding and training on a GPU",
                   f"python benchmarks/gpu.py --device {args.device} --clips {args.clips}",
                   rows, notes, args.out_dir)


if __name__ == "__main__":
    main()
