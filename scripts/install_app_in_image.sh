#!/usr/bin/env sh
# Install FedA2V into a flwr/superexec image (run by server/Dockerfile), from the app's folder:
#
#   install_app_in_image.sh requirements [EXTRAS] > FILE  # what to install, one a line
#   install_app_in_image.sh deps FILE                     # install it: the big, rarely rebuilt layer
#   install_app_in_image.sh app [EXTRAS]                  # fed-a2v itself (--no-deps), then a check
#
# What a node needs is pyproject.toml's dependencies (the core): no Ray, no diffusers, no
# matplotlib or TensorBoard. EXTRAS (e.g. "plots" or "plots,corpora": pyproject.toml's
# [project.optional-dependencies]) adds those extras; the check after the install makes sure
# the image holds no module of an extra it was not asked for. The PyTorch packages come from
# TORCH_INDEX (default: the CPU wheels) when it answers within a few seconds, else from PyPI
# (where Linux torch is the CUDA build, several GB). TORCH_INDEX="" means PyPI.
set -eu
pip() { python -m pip install --no-cache-dir --disable-pip-version-check "$@"; }

# The requirement lines of the core and of the extras named in $1 (comma or space separated),
# with fed-a2v's own extras (`all` = "fed-a2v[generate,...]") expanded; or, with $2 = "extras",
# the names of the extras that brings in.
resolve() {
  python - "$@" <<'PY'
import re
import sys
import tomllib

from pip._vendor.packaging.requirements import Requirement

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
optional = project["optional-dependencies"]
asked = [e for e in re.split(r"[,\s]+", sys.argv[1] if len(sys.argv) > 1 else "") if e]
extras, lines = [], list(project["dependencies"])
while asked:
    extra = asked.pop(0)
    if extra not in optional:
        sys.exit(f"no extra '{extra}' in pyproject.toml: {', '.join(optional)}")
    if extra in extras:
        continue
    extras.append(extra)
    for line in optional[extra]:
        req = Requirement(line)
        if req.name == project["name"]:  # one of our own extras: `all` = fed-a2v[...]
            asked += sorted(req.extras)
        else:
            lines.append(line)
if len(sys.argv) > 2:
    print(" ".join(extras))
else:
    print("\n".join(str(Requirement(line)) for line in lines))
PY
}

case "${1:-}" in
requirements)
  resolve "${2:-}"
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
  python - $(resolve "${2:-}" extras) <<'PY'
import sys

import fed_a2v.federation.server, fed_a2v.federation.node, server.app, client.app, torch  # noqa: F401
from fed_a2v.extras import EXTRAS, missing

asked = set(sys.argv[1:])
for extra, modules in EXTRAS.items():
    if extra not in asked:  # what a node does not need stays out of the image
        present = sorted(set(modules) - set(missing(*modules)))
        assert not present, f"{', '.join(present)} (the `{extra}` extra) is in the image"
print("fed-a2v ready: torch", torch.__version__, "(CUDA build)" if torch.version.cuda else "(CPU)",
      "; extras:", ", ".join(sorted(asked)) or "none (what a node needs)")
PY
  ;;
*)
  echo "usage: $0 requirements [EXTRAS] | deps FILE | app [EXTRAS]" >&2
  exit 2
  ;;
esac
