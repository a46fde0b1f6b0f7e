#!/usr/bin/env bash
# `flwr run .` as a Flower user types it, on a clean clone of this checkout's HEAD:
#   1. with Flower's own defaults (its managed local SuperLink, runtime dependency install,
#      2 simulated SuperNodes): the run must complete, or fail within a minute with the line
#      saying what to run instead;
#   2. the local recipe of docs/deployment.md, as written: it must complete.
# Needs the venv `make run` makes (VENV=... for another) and free ports 39091-39093 and 8000.
# Usage: scripts/check_flwr_run.sh [WORK_DIR]
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d /tmp/feda2v-flwr-run.XXXXXX)}
venv=${VENV:-$repo/.venv}
export PATH="$venv/bin:$PATH" FLWR_DISABLE_UPDATE_CHECK=1
mkdir -p "$work"
rm -rf "$work/clone"
git clone --quiet "$repo" "$work/clone"
cd "$work/clone"

status() {  # status and details of the newest run on connection $1 (empty: the default)
  flwr ls ${1:+"$1"} --format json 2>/dev/null | python3 -c '
import json, sys
text = sys.stdin.read()
runs = json.loads(text[text.index("{"):]).get("runs", []) if "{" in text else []
run = max(runs, key=lambda r: r.get("pending-at", ""), default={})
print(run.get("status", ""), "|", run.get("status-details", ""))'
}

kill_tree() {  # a process and everything below it
  local child
  for child in $(pgrep -P "$1" || true); do kill_tree "$child"; done
  kill "$1" 2>/dev/null || true
}

port_free() {
  ! python3 -c "import socket, sys; s = socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', $1)))"
}

for port in 39091 39092 39093 8000; do
  port_free "$port" || { echo "port $port is in use: stop what listens there first" >&2; exit 2; }
done

echo "== 1. flwr run . with Flower's defaults (FLWR_HOME=$work/flwr-defaults)"
export FLWR_HOME="$work/flwr-defaults"
started=$(date +%s)
flwr run .
line=""
while (( $(date +%s) - started < 600 )); do
  line=$(status)
  [[ $line == finished:* ]] && break
  sleep 2
done
elapsed=$(( $(date +%s) - started ))
echo "after ${elapsed} s: $line"
if [[ $line == finished:completed* ]]; then
  echo "ok: completed"
elif [[ $line == finished:failed* && $line == *num-supernodes=* && $elapsed -le 60 ]]; then
  echo "ok: stopped within a minute, saying what to run instead; running that:"
  started=$(date +%s)
  flwr run . --federation-config "num-supernodes=3" --stream > "$work/defaults-run.log" 2>&1
  line=$(status)
  echo "after $(( $(date +%s) - started )) s: $line"
  [[ $line == finished:completed* ]] || { echo "FAILED: see $work/defaults-run.log" >&2; exit 1; }
  grep -h "uv sync took" "$work/defaults-run.log" || true
else
  echo "FAILED: neither completed nor a quick failure naming num-supernodes" >&2
  exit 1
fi
managed=$(pgrep -f "$FLWR_HOME/local-superlink" | head -n 1 || true)
[[ -n $managed ]] && kill_tree "$managed"

echo "== 2. the local recipe of docs/deployment.md (FLWR_HOME=$work/flwr-recipe)"
export FLWR_HOME="$work/flwr-recipe"
mkdir -p "$FLWR_HOME"
flower-superlink --simulation --insecure --disable-runtime-dependency-installation \
  > "$work/recipe-superlink.log" 2>&1 &
superlink=$!
trap 'kill_tree $superlink' EXIT
until ! port_free 8000; do sleep 0.5; done
cat >> "${FLWR_HOME:-$HOME/.flwr}/config.toml" <<'TOML'
[superlink.feda2v-local]
address = "127.0.0.1:8000"
insecure = true
TOML
started=$(date +%s)
flwr run . feda2v-local --federation-config "num-supernodes=3" --stream > "$work/recipe-run.log" 2>&1
line=$(status feda2v-local)
echo "after $(( $(date +%s) - started )) s: $line"
[[ $line == finished:completed* ]] || { echo "FAILED: see $work/recipe-run.log" >&2; exit 1; }
summary=$(ls -d runs/quickstart-*/summary.json | tail -n 1)
python3 -c "
import json, sys
s = json.load(open('$summary'))
print('ok: completed;', s['num_nodes'], 'nodes;', 'held-out top-1 CLIP / T5',
      s['eval_clip_top1'], '/', s['eval_t5_top1'])"
