#!/usr/bin/env bash
# `make test-compose`: the federation in real containers, as a user starts it, for
# docker-compose.yml and for docker-compose.yml + docker-compose.tls.yml. Each runs
# `up --build` under its own project name, waits for the `run` service to exit and checks:
#   - `run` exited 0 (scripts/compose_run.py: the run finished:completed);
#   - the `runs` volume holds the run's summary.json, metrics.jsonl has every round of its
#     config.json, each round averaged 3 nodes, and 3 nodes took part (summary, nodes.jsonl);
#   - TLS: a SuperNode with a key that was never registered is refused and takes no part.
# Containers, volumes and networks are removed afterwards, on failure too.
#
# Needs a Docker engine, `docker compose` or `docker-compose`, the images
# flwr/{superlink,supernode,superexec}:<flwr version> (from Docker Hub, or built locally by
# ../shared/docker/flwr-images.sh) and PyPI for the build. FEDA2V_CONFIG picks the experiment
# (default configs/compose_check.json: 3 rounds on a small corpus); TIMEOUT bounds each run.
set -euo pipefail
cd "$(dirname "$0")/.."

export FEDA2V_CONFIG=${FEDA2V_CONFIG:-configs/compose_check.json}
NODES=3
TIMEOUT=${TIMEOUT:-1800}
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
docker info >/dev/null 2>&1 || {
  echo "no Docker engine answers: start one (here: ../shared/docker/flwr-images.sh)" >&2; exit 1; }
project=""
files=()
scratch=$(mktemp -d)

dc() { "${compose[@]}" -p "$project" "${files[@]}" "$@"; }

cleanup() {
  if [[ -n $project ]]; then
    dc down --volumes --remove-orphans --timeout 20 >/dev/null 2>&1 || true
    docker rm -f "$project-intruder" >/dev/null 2>&1 || true
  fi
  project=""
}
trap 'status=$?; cleanup; rm -rf "$scratch"; exit $status' EXIT

fail() {
  local logs=${TMPDIR:-/tmp}/$project.log
  dc logs --no-color >"$logs" 2>&1 || true
  echo "FAILED: $*" >&2
  echo "every container's log: $logs" >&2
  exit 1
}

container() { dc ps -q "$1"; }
state() { docker inspect -f '{{.State.Status}}' "$1"; }

wait_for_exit() {  # $1: container id; waits until it exited for good
  local deadline=$((SECONDS + TIMEOUT))
  until [[ $(state "$1") == exited ]]; do
    ((SECONDS < deadline)) || fail "the run did not end within ${TIMEOUT}s"
    sleep 5
  done
}

check_outputs() {  # the run's files in the `runs` volume
  docker run --rm -i -v "${project}_runs:/runs:ro" --entrypoint python feda2v:latest - "$NODES" <<'PY'
import json, sys
from pathlib import Path

nodes = int(sys.argv[1])
runs = [p.parent for p in Path("/runs").glob("*/summary.json")]
assert len(runs) == 1, f"expected one run with a summary.json in the runs volume, found {runs}"
run = runs[0]
summary = json.loads((run / "summary.json").read_text())
rounds = json.loads((run / "config.json").read_text())["federation"]["global_rounds"]
lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
assert [r["round"] for r in lines] == list(range(1, rounds + 1)), f"rounds recorded: {lines}"
assert all(r["train_nodes"] == nodes for r in lines), [r["train_nodes"] for r in lines]
assert summary["rounds"] == rounds and summary["num_nodes"] == nodes, summary
per_round = {}
for r in map(json.loads, (run / "nodes.jsonl").read_text().splitlines()):
    per_round.setdefault(r["round"], set()).add(r["node"])
assert all(len(per_round.get(i, ())) == nodes for i in range(1, rounds + 1)), per_round
print(f"  {run.name}: {rounds}/{rounds} rounds, {nodes} nodes in every round; last round:",
      {k: summary.get(k) for k in ("eval_clip_cosine", "eval_t5_cosine")})
PY
}

start_intruder() {  # a 4th SuperNode whose public key nobody registered
  docker run -d --name "$project-intruder" --network "${project}_default" \
    -v "$FEDA2V_CREDENTIALS/certificates/ca.crt:/app/certificates/ca.crt:ro" \
    -v "$FEDA2V_CREDENTIALS/keys/supernode-4:/app/keys/supernode-4:ro" \
    "$(docker inspect -f '{{.Config.Image}}' "$(container supernode-1)")" \
    --root-certificates /app/certificates/ca.crt --auth-supernode-private-key \
    /app/keys/supernode-4 --superlink superlink:9091 --host 0.0.0.0 --port 9097 \
    --isolation process --max-retries 3 --max-wait-time 20 >/dev/null
}

check_intruder() {
  local id=$project-intruder deadline=$((SECONDS + 300))
  until [[ $(state "$id") == exited ]]; do
    ((SECONDS < deadline)) || fail "the unregistered SuperNode is still running"
    sleep 2
  done
  # Logs go to files first: `grep -q` stops reading at its first match, and under pipefail the
  # writer's SIGPIPE would fail the check.
  docker logs "$id" >"$scratch/intruder.log" 2>&1
  grep -q "Failed to activate SuperNode" "$scratch/intruder.log" ||
    fail "the unregistered SuperNode was not refused: $(tail -n 20 "$scratch/intruder.log")"
  dc logs --no-color superlink >"$scratch/superlink.log" 2>&1
  grep -q "No SuperNode found with the given public key" "$scratch/superlink.log" ||
    fail "the SuperLink did not report the unknown public key"
  echo "  an unregistered SuperNode was refused (exit $(docker inspect -f '{{.State.ExitCode}}' "$id"))"
}

federation() {  # $1: name; $2...: compose files
  local name=$1 started=$SECONDS run
  shift
  project="feda2vcheck${name}$$"
  files=()
  for f in "$@"; do files+=(-f "$f"); done
  echo "== $name: ${compose[*]} ${files[*]} up --build ($FEDA2V_CONFIG)"
  dc up --build -d >"$scratch/$name-up.log" 2>&1 || fail "up: $(tail -40 "$scratch/$name-up.log")"
  run=$(container run)
  if [[ $name == tls ]]; then
    local deadline=$((SECONDS + 600))
    until [[ $(docker logs "$run" 2>&1) == *submitted* ]]; do  # keys registered, run under way
      [[ $(state "$run") != exited ]] || break
      ((SECONDS < deadline)) || fail "the run was not submitted"
      sleep 2
    done
    start_intruder
  fi
  wait_for_exit "$run"
  local code
  code=$(docker inspect -f '{{.State.ExitCode}}' "$run")
  [[ $code == 0 ]] || fail "the run service exited $code: $(docker logs "$run" 2>&1 | tail -5)"
  echo "  run service exited 0: $(docker logs "$run" 2>&1 | grep -o 'run [0-9]*: finished:.*' | tail -1)"
  check_outputs || fail "the run's outputs"
  if [[ $name == tls ]]; then check_intruder; fi
  cleanup
  echo "  passed in $((SECONDS - started)) s"
}

federation plain docker-compose.yml
export FEDA2V_CREDENTIALS=$scratch/credentials
bash scripts/make_credentials.sh "$FEDA2V_CREDENTIALS" $((NODES + 1)) >/dev/null
federation tls docker-compose.yml docker-compose.tls.yml
docker images --format '  image {{.Repository}}:{{.Tag}} {{.Size}}' feda2v:latest
echo "compose federations passed (plain and TLS) in ${SECONDS} s"
