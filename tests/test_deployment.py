"""Flower's deployment engine on loopback: flower-superlink, three flower-supernode processes each
reading its own node JSON, `flwr run`; then the same with TLS and SuperNode authentication."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from fed_a2v.launch.host import (
    COMPLETED,
    Process,
    flower_env,
    free_port,
)

from drills import (
    HANG,
    Federation,
    experiment_dict,
    node_files,
    read_rounds,
    small_experiment,
    supernode_killed_mid_round,
    wait_until,
)

APP_DIR = Path(__file__).resolve().parent.parent
NODES = 3
ROUNDS = 2


def run_federation(tmp_path: Path, superlink_args: list[str], node_args: list[list[str]],
                   connection_root_cert: Path | None = None,
                   before_run=None) -> tuple[dict, Path]:
    experiment = small_experiment(tmp_path, "deployed", global_rounds=ROUNDS)
    with Federation(tmp_path, superlink_args, connection_root_cert) as federation:
        if before_run:
            before_run(federation)
        for node_file, extra in zip(node_files(tmp_path, NODES), node_args, strict=True):
            federation.supernode(node_file, extra=extra)
        entry = federation.run({"config": str(experiment),
                                "output-dir": str(tmp_path / "told")})
    return entry, tmp_path


def check_outputs(entry: dict, root: Path) -> dict:
    assert entry["status"] == COMPLETED, entry.get("status-details")
    (run_dir,) = (root / "told").glob("deployed-*")  # where the run config told the server
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == list(range(1, ROUNDS + 1))
    assert len(list((run_dir / "checkpoints").glob("round-*.safetensors"))) == ROUNDS
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_nodes"] == NODES
    # Every node generated and encoded its own data, under its own folders.
    for i in range(NODES):
        assert (root / f"node-{i}" / "data" / "meta" / "esc50.csv").exists()
        assert list((root / f"node-{i}" / "cache" / "tokens").rglob("*.npy"))
    assert not (root / "server-data").exists()  # the server needs the class names only
    return summary


def test_superlink_and_three_supernodes_with_their_own_json(tmp_path: Path) -> None:
    entry, root = run_federation(tmp_path, [], [[]] * NODES)
    check_outputs(entry, root)


def make_credentials(root: Path) -> tuple[Path, Path]:
    subprocess.run(["bash", str(APP_DIR / "scripts" / "make_credentials.sh"), str(root),
                    str(NODES + 1)], check=True, capture_output=True, timeout=120)
    return root / "certificates", root / "keys"


def test_tls_and_supernode_auth_refuse_an_unregistered_node(tmp_path: Path) -> None:
    certs, keys = make_credentials(tmp_path / "credentials")
    tls = ["--ssl-ca-certfile", str(certs / "ca.crt"), "--ssl-certfile",
           str(certs / "superlink.crt"), "--ssl-keyfile", str(certs / "superlink.key")]
    node_tls = ["--root-certificates", str(certs / "ca.crt")]
    intruder: list[Process] = []

    def register_and_start_intruder(federation: Federation) -> None:
        for i in range(1, NODES + 1):
            public_key = str(keys / f"supernode-{i}.pub")
            done = subprocess.run(["flwr", "supernode", "register", public_key, "fed"],
                                  env=federation.user_env, capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
        # Key NODES+1 is never registered: this SuperNode must not get in.
        node_json = tmp_path / "intruder.json"
        node_json.write_text(json.dumps({"dataset_path": str(tmp_path / "intruder-data")}))
        intruder.append(Process(
            ["flower-supernode", "--superlink", federation.superlink, "--port", str(free_port()),
             "--node-config", f"node-config='{node_json}'", *node_tls,
             "--auth-supernode-private-key", str(keys / f"supernode-{NODES + 1}"),
             "--max-retries", "3", "--max-wait-time", "20"],
            flower_env(tmp_path / "intruder-flwr"), tmp_path / "intruder.log"))
        federation.processes.append(intruder[0])

    node_args = [[*node_tls, "--auth-supernode-private-key", str(keys / f"supernode-{i}")]
                 for i in range(1, NODES + 1)]
    entry, root = run_federation(tmp_path, [*tls, "--enable-supernode-auth"], node_args,
                                 connection_root_cert=certs / "ca.crt",
                                 before_run=register_and_start_intruder)
    check_outputs(entry, root)  # exactly the three registered nodes took part
    assert not (tmp_path / "intruder-data").exists()  # never given any work
    intruder_log = tmp_path / "intruder.log"
    wait_until(lambda: "Failed to activate SuperNode" in intruder_log.read_text(), HANG,
               "the intruder's refusal")
    superlink_log = (tmp_path / "superlink.log").read_text(errors="replace")
    assert "No SuperNode found with the given public key" in superlink_log


@pytest.mark.parametrize("certificate", ["ca.crt", "superlink.crt"])
def test_credentials_script_makes_a_valid_chain(tmp_path: Path, certificate: str) -> None:
    certs, keys = make_credentials(tmp_path)
    done = subprocess.run(["openssl", "verify", "-CAfile", str(certs / "ca.crt"),
                           str(certs / certificate)], capture_output=True, text=True)
    assert done.returncode == 0 and "OK" in done.stdout
    assert (keys / "supernode-1.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    before = (certs / "superlink.crt").read_bytes()
    make_credentials(tmp_path)  # idempotent: a second call keeps the files
    assert (certs / "superlink.crt").read_bytes() == before


FAILED = "finished:failed"


def check_quorum_lost_then_resumed(seen: dict, rounds: int) -> None:
    """Every round needs all three nodes; the last dies in round 2 and stays dead: once the
    quorum is lost no train instruction goes out, the run fails after `quorum_timeout` naming
    the node, and a resume with the node back finishes every round with all three."""
    entry = seen["entry"]
    assert entry["status"] == FAILED, entry
    details = entry.get("status-details", "")
    assert f"missing: node {NODES - 1}" in details, details
    assert "federation.min_clients" in details and "federation.quorum_timeout" in details
    assert f"after round {seen['checkpointed']}" in details and "resume=true" in details
    # The survivors were sent the rounds checkpointed and, at most, the round the node died in;
    # not that round again, nor any later one.
    assert 1 <= seen["checkpointed"] < rounds
    assert all(count <= seen["checkpointed"] + 1 for count in seen["train_messages"]), seen
    resumed = seen["resumed"]
    assert resumed["status"] == COMPLETED, resumed.get("status-details")
    records = seen["rounds"]
    assert [r["round"] for r in records] == list(range(1, rounds + 1))
    assert all(r["train_nodes"] == NODES for r in records)
    # No metric lost: every round's evaluation is there (one-stage rounds carry it over).
    assert all(r["eval_clip_top1"] is not None and r["eval_t5_top1"] is not None
               for r in records)
    averaged = {(n["round"], n["flower_node_id"]) for n in seen["nodes"] if "train_clip_loss" in n}
    assert {r for r, node in averaged if node == seen["restarted_id"]} == \
        set(range(seen["checkpointed"] + 1, rounds + 1))
    names = {n["flower_node_id"]: n["node"] for n in seen["nodes"]}
    assert names[seen["killed_id"]] == names[seen["restarted_id"]] == f"node {NODES - 1}"
    assert seen["summary"]["num_nodes"] == NODES and seen["summary"]["rounds"] == rounds


def test_a_federation_that_loses_its_quorum_stops_and_resumes(tmp_path: Path) -> None:
    """configs/quickstart.json as shipped (min_clients 3, rounds cut to 3, a short quorum
    wait): one SuperNode killed in round 2, as a new user would meet it."""
    seen = supernode_killed_mid_round(
        tmp_path, rounds=3, nodes=NODES, experiment=APP_DIR / "configs" / "quickstart.json",
        run_config={"set": "federation.quorum_timeout=20"}, resume=True)
    check_quorum_lost_then_resumed(seen, 3)


def test_a_killed_supernode_above_the_quorum_does_not_stop_the_federation(
        tmp_path: Path) -> None:
    """min_clients 2 of 3: the same kill; the run goes on with the two nodes left."""
    rounds = 4
    experiment = small_experiment(tmp_path, "killed-node", num_clients=NODES, min_clients=2,
                                  local_epochs=3)
    seen = supernode_killed_mid_round(tmp_path, rounds=rounds, nodes=NODES,
                                      experiment=experiment)
    assert seen["entry"]["status"] == COMPLETED, seen["entry"].get("status-details")
    records = seen["rounds"]
    assert [r["round"] for r in records] == list(range(1, rounds + 1))
    assert records[0]["train_nodes"] == NODES
    assert all(r["train_nodes"] == 2 for r in records[-2:])  # averaging the two left
    assert all(r["eval_clip_top1"] is not None for r in records)
    # The dead node was told off by the SuperLink (no heartbeat), not by a timeout, and was
    # averaged in no round after its death.
    failed = seen["summary"]["failed_replies"]
    assert {(f["stage"], f["flower_node_id"]) for f in failed} == {("train",
                                                                    seen["killed_id"])}
    assert all("heartbeat" in f["why"] for f in failed)
    died_in = min(f["round"] for f in failed)
    averaged = {(n["round"], n["flower_node_id"]) for n in seen["nodes"] if "train_clip_loss" in n}
    assert all(r < died_in for r, node in averaged if node == seen["killed_id"])
    assert seen["summary"]["num_nodes"] == NODES


def test_simulation_and_deployment_write_the_same_metrics_in_both_protocols(
        tmp_path: Path) -> None:
    """One experiment, one seed, on Flower's simulation engine (Ray) and on the deployment
    engine (a SuperLink and 3 SuperNodes on loopback), one stage and two stages per round:
    the same metrics.jsonl on both engines, and the same in both protocols."""
    experiment = experiment_dict(tmp_path, "engines",
                                 federation={"global_rounds": 3, "eval_gap": 2})
    experiment["experiment"]["cache_dir"] = str(tmp_path / "cache")
    paths = {}
    for protocol in ("one_stage", "two_stage"):
        experiment["federation"]["round_protocol"] = protocol
        paths[protocol] = tmp_path / f"{protocol}.json"
        paths[protocol].write_text(json.dumps(experiment))
    lines: dict[tuple[str, str], list[dict]] = {}

    def run(federation: Federation, engine: str, **kwargs) -> None:
        for protocol, path in paths.items():
            outputs = tmp_path / engine / protocol
            entry = federation.run({"config": str(path), "output-dir": str(outputs)},
                                   **kwargs)
            assert entry["status"] == COMPLETED, entry.get("status-details")
            lines[engine, protocol] = read_rounds(outputs)

    with Federation(tmp_path / "simulation-link", simulation=True) as federation:
        run(federation, "simulation", federation_config={"num-supernodes": NODES})
    with Federation(tmp_path / "deployment-link") as federation:
        for i in range(NODES):  # each node its shard of the same corpus, as simulated
            node_file = tmp_path / f"node-{i}.json"
            node_file.write_text(json.dumps({
                "node_split_id": i, "num_nodes": NODES,
                "dataset_path": experiment["dataset"]["path"],
                "cache_dir": experiment["experiment"]["cache_dir"]}))
            federation.supernode(node_file)
        run(federation, "deployment")
    reference = lines["simulation", "one_stage"]
    assert [r["round"] for r in reference] == [1, 2, 3]
    assert [r["eval_clip_top1"] is not None for r in reference] == [False, True, True]
    assert all(found == reference for found in lines.values()), lines
