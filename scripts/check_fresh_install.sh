#!/usr/bin/env bash
# Installs FedA2V as a user would, and runs it: a fresh venv, pip's own defaults (no machine-wide
# pip configuration, so no caps or local wheel folders), `pip install '.[simulation]'` (not
# editable: the core and Flower's simulation engine, no other extra), then, from another folder:
#   - `fed-a2v validate` and a 1-round `fed-a2v simulate` of the quickstart;
#   - `fed-a2v generate` exits 2 with one line naming the `generate` extra;
#   - after `pip install '.[generate]'`, the same command draws the gallery.
# Prints the resolved torch / transformers / flwr / ray and the extras left out.
#   scripts/check_fresh_install.sh [WORK_DIR]     (downloads torch: several GB)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d -t feda2v-fresh-XXXX)}
python=${PYTHON:-python3}
export PIP_CONFIG_FILE=/dev/null
fail() { echo "FAILED: $*" >&2; exit 1; }
mkdir -p "$work"
"$python" -m venv "$work/venv"
bin=$work/venv/bin
"$bin/pip" install --quiet --upgrade pip
"$bin/pip" install --quiet "$repo[simulation]"
echo "install (core + simulation): ${SECONDS} s, venv $(du -sh "$work/venv" | cut -f1)"
cd "$work"  # not the checkout: everything must come from the installed package
"$bin/python" - <<'PY'
import importlib.metadata as md

import fed_a2v.data.audio  # noqa: F401  (the feature path imports without torchaudio)
from fed_a2v.extras import EXTRAS, missing

print("resolved:", ", ".join(f"{p} {md.version(p)}" for p in
                             ("torch", "transformers", "flwr", "ray", "numpy")))
left_out = {extra: missing(*modules) for extra, modules in EXTRAS.items()}
assert not left_out.pop("simulation"), "Ray is missing"
assert all(gone == list(EXTRAS[extra]) for extra, gone in left_out.items()), left_out
print("not installed:", "; ".join(f"{e} ({', '.join(m)})" for e, m in left_out.items()))
PY
"$bin/fed-a2v" validate "$("$bin/python" -c \
    'from fed_a2v.launch.app_dir import default_config; print(default_config())')"
"$bin/fed-a2v" simulate --rounds 1 --output-dir "$work/runs"
run=$(echo "$work"/runs/*)
test -f "$run/summary.json" && test -f "$run/report.md" || fail "no summary.json / report.md in $run"
echo "simulated: $run (${SECONDS} s so far)"

# A picture from a sound needs the `generate` extra: without it, exit 2 and one line naming it.
draw() {
  "$bin/fed-a2v" generate "$run" --audio "$work"/data/synthetic/audio/1-*.wav \
    --pipeline builtin:tiny-flux --steps 1 --size 32 --out "$work/gallery"
}
code=0
draw 2>"$work/generate.err" || code=$?
[[ $code == 2 ]] || fail "generate without the generate extra exited $code: $(tail -5 "$work/generate.err")"
grep -q "needs the \`generate\` extra .*: pip install 'fed-a2v\[generate\]'$" "$work/generate.err" ||
  fail "generate did not name its extra: $(tail -5 "$work/generate.err")"
echo "generate without its extra: exit 2, $(tail -1 "$work/generate.err")"
"$bin/pip" install --quiet "$repo[generate]"
draw
test -f "$work/gallery/gallery.png" || fail "no gallery.png"
echo "fresh install: ok ($work), ${SECONDS} s in all"
