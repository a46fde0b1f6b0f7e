#!/usr/bin/env bash
# Installs FedA2V as a user would, and runs it: a fresh venv, pip's own defaults (no machine-wide
# pip configuration, so no caps or local wheel folders), `pip install .` (not editable), then a
# 2-round simulation from another directory. Prints the resolved torch / transformers / flwr.
#   scripts/check_fresh_install.sh [WORK_DIR]     (downloads torch: several GB, ~10 min)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d -t feda2v-fresh-XXXX)}
python=${PYTHON:-python3}
export PIP_CONFIG_FILE=/dev/null
mkdir -p "$work"
"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --upgrade pip
"$work/venv/bin/pip" install --quiet "$repo"
echo "install: ${SECONDS} s, venv $(du -sh "$work/venv" | cut -f1)"
cd "$work"  # not the checkout: everything must come from the installed package
"$work/venv/bin/python" - <<'PY'
import importlib.metadata as md
import fed_a2v.data.audio  # noqa: F401  (the feature path imports without torchaudio)
print("resolved:", ", ".join(f"{p} {md.version(p)}" for p in
                             ("torch", "transformers", "flwr", "ray", "numpy", "diffusers")))
PY
"$work/venv/bin/fed-a2v" validate "$("$work/venv/bin/python" -c \
    'from fed_a2v.launch.app_dir import default_config; print(default_config())')"
"$work/venv/bin/fed-a2v" simulate --rounds 2 --output-dir "$work/runs"
test -f "$work"/runs/*/summary.json
# A picture from a sound: the run's adapters drive the built-in tiny FLUX pipeline.
"$work/venv/bin/fed-a2v" generate "$work"/runs/* --audio "$work"/data/synthetic/audio/1-*.wav \
    --pipeline builtin:tiny-flux --steps 1 --size 32 --out "$work/gallery"
test -f "$work/gallery/gallery.png"
echo "fresh install: ok ($work), ${SECONDS} s in all"
