#!/usr/bin/env sh
# Install FedA2V into a flwr/superexec image (run by server/Dockerfile), from the app's folder:
#
#   install_app_in_image.sh requirements > FILE  # pyproject.toml's dependencies, one a line
#   install_app_in_image.sh deps FILE            # install them: the big, rarely rebuilt layer
#   install_app_in_image.sh app                  # fed-a2v itself (--no-deps), then a smoke check
#
# A deployment needs no Ray: the `simulation` extra (flwr[simulation]) is dropped. The PyTorch
# packages come from TORCH_INDEX (default: the CPU wheels) when it answers within a few seconds,
# else from PyPI (where Linux torch is the CUDA build, several GB). TORCH_INDEX="" means PyPI.
set -eu
pip() { python -m pip install --no-cache-dir --disable-pip-version-check "$@"; }

case "${1:-}" in
requirements)
  python - <<'PY'
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib
from pip._vendor.packaging.requirements import Requirement

with open("pyproject.toml", "rb") as f:
    for line in tomllib.load(f)["project"]["dependencies"]:
        req = Requirement(line)
        req.extras.discard("simulation")  # Ray: simulation only
        print(req)
PY
  ;;
deps)
  # The PyTorch family (torch, torchaudio, ...) first, from the index; then the rest from PyPI.
  index=${TORCH_INDEX-https://download.pytorch.org/whl/cpu}
  if [ -n "$index" ] && python -c "import sys, urllib.request
urllib.request.urlopen(sys.argv[1].rstrip('/') + '/torch/', timeout=5)" "$index" 2>/dev/null; then
    echo "PyTorch from $index"
    grep '^torch' "$2" >/tmp/pytorch.txt && pip --index-url "$index" -r /tmp/pytorch.txt
  else
    echo "PyTorch index ${index:-(none)} not reachable: PyTorch from PyPI"
  fi
  pip -r "$2"
  ;;
app)
  pip --no-deps .
  python - <<'PY'
import importlib.util

import fed_a2v.federation.server, fed_a2v.federation.node, server.app, client.app, torch  # noqa: F401

assert importlib.util.find_spec("ray") is None, "Ray is in the image"
print("fed-a2v ready: torch", torch.__version__, "(CUDA build)" if torch.version.cuda else "(CPU)")
PY
  ;;
*)
  echo "usage: $0 requirements | deps FILE | app" >&2
  exit 2
  ;;
esac
