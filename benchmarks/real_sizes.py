"""Sizes and speeds at the real models' shapes, without their weights.

Builds a full-size AST (MIT/ast-finetuned-audioset-10-10-0.4593's config: 12 layers, width 768,
128 mel bins x 1024 frames) with random weights, which costs exactly what the real one costs,
and the adapters at CLIP ViT-L/14 (768) and T5-XXL (17 x 4096) widths. Writes the fragment
`real_sizes` and prints it.

    .venv/bin/python benchmarks/real_sizes.py [--clips 8] [--threads 2] [--out-dir benchmarks/out]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from fragments import ESC50_CLASSES, OUT_DIR, row, write_fragment
from transformers import ASTConfig, ASTModel

from fed_a2v.config.feda2v_section import FedA2VConfig
from fed_a2v.data.audio import FeatureSettings, fbank_features
from fed_a2v.model.adapters import adapters_state, build_adapters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    settings = FeatureSettings()  # AudioSet AST: 16 kHz, 128 mel bins, 1024 frames
    ast = ASTModel(ASTConfig()).eval()
    waves = [torch.randn(5 * settings.sampling_rate) * 0.1 for _ in range(args.clips)]
    with torch.no_grad():
        start = time.perf_counter()
        feats = torch.stack([fbank_features(w, settings) for w in waves])
        fbank_s = (time.perf_counter() - start) / args.clips
        start = time.perf_counter()
        tokens = ast(input_values=feats).last_hidden_state
        ast_s = (time.perf_counter() - start) / args.clips
    params = sum(p.numel() for p in ast.parameters())

    adapters = build_adapters(768, 768, 4096, FedA2VConfig(), target_rows=ESC50_CLASSES)
    rows = [
        row("AST parameters", params, "", f"{params * 4 / 2**20:.0f} MiB fp32"),
        row("AST tokens per clip", " x ".join(map(str, tokens.shape[1:]))),
        row("fbank per clip", fbank_s * 1000, "ms"),
        row(f"AST forward per clip ({args.threads} threads)", ast_s, "s"),
        row("token cache per clip (fp16)", tokens[0].numel() * 2 / 2**20, "MiB"),
    ]
    for name, adapter in adapters.items():
        rows.append(row(f"{name} adapter parameters",
                        sum(p.numel() for p in adapter.parameters())))
    payload = sum(t.numel() * t.element_size() for t in adapters_state(adapters).values())
    rows.append(row("adapter payload per node per round, each way (fp32)", payload / 2**20,
                    "MiB"))
    notes = [f"Random weights at the real configs (cost is the real one's); {args.clips} clips "
             "of 5 s noise, batched in one AST forward."]
    write_fragment("real_sizes", "Sizes and speeds at the real models' shapes",
                   "python benchmarks/real_sizes.py", rows, notes, args.out_dir)


if __name__ == "__main__":
    main()
