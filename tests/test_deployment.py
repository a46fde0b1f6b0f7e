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
    node_files,
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


def check_killed_node_run(seen: dict, rounds: int) -> None:
    """What holds at any speed when the last node dies as round `killed_in` is under way and
    comes back once that round is recorded, every round needing all three nodes."""
    assert seen["entry"]["status"] == COMPLETED, seen["entry"].get("status-details")
    records, killed_in = seen["rounds"], seen["killed_in"]
    assert [r["round"] for r in records] == list(range(1, rounds + 1))
    # The round under way went on without the dead node, told by the SuperLink (no heartbeat),
    # not by a timeout: 2 of 3 replied, too few to change the adapters.
    assert records[killed_in - 1]["train_nodes"] == NODES - 1
    failed = seen["summary"]["failed_replies"]
    assert [(f["round"], f["stage"], f["flower_node_id"]) for f in failed] == \
        [(killed_in, "train", seen["killed_id"])]
    assert "heartbeat" in failed[0]["why"]
    # No round averaged the dead node after its death...
    averaged = {(n["round"], n["flower_node_id"]) for n in seen["nodes"]
                if "train_clip_loss" in n}
    assert all(r < killed_in for r, node in averaged if node == seen["killed_id"])
    # ... and training waited for it to be back: every later round has all three, with it.
    assert all(r["train_nodes"] == NODES for r in records[killed_in:])
    assert {r for r, node in averaged if node == seen["restarted_id"]} == \
        set(range(killed_in + 1, rounds + 1))
    # Under one name before and after its restart, as the other nodes keep theirs.
    names = {n["flower_node_id"]: n["node"] for n in seen["nodes"]}
    assert names[seen["killed_id"]] == names[seen["restarted_id"]] == failed[0]["node"]
    assert sorted(set(names.values())) == [f"node {i}" for i in range(NODES)]
    assert seen["summary"]["num_nodes"] == NODES  # the restarted node is the same node


def test_a_killed_supernode_does_not_stop_the_federation(tmp_path: Path) -> None:
    seen = supernode_killed_mid_round(tmp_path, rounds=4, nodes=NODES)
    check_killed_node_run(seen, 4)


def test_a_dead_node_does_not_stall_the_default_config(tmp_path: Path) -> None:
    """configs/quickstart.json as shipped (its rounds cut to 3): one SuperNode killed mid-round.
    Its round timeout is the default one, an hour for the first round and at least 5 minutes
    after, so the round ends because the SuperLink reports the node gone."""
    seen = supernode_killed_mid_round(tmp_path, rounds=3, nodes=NODES,
                                      experiment=APP_DIR / "configs" / "quickstart.json")
    check_killed_node_run(seen, 3)
