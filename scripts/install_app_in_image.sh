#!/usr/bin/env sh
# Install FedA2V into a flwr/superexec image (run by server/Dockerfile and client/Dockerfile).
# The image already has flwr; Ray (the simulation extra) is not needed in a deployment, and
# CPU wheels of torch keep the image small (set TORCH_INDEX to a CUDA index for GPUs).
set -eu
sed -i 's/"flwr\[simulation\]/"flwr/' pyproject.toml
python -m pip install --no-cache-dir --extra-index-url "${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" .
python -c "import fed_a2v, torch, torchaudio, transformers; print('fed-a2v ready, torch', torch.__version__)"
