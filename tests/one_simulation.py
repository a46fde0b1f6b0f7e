"""Several experiments, one after the other, in ONE Flower simulation (test scaffolding).

`python tests/one_simulation.py NODES EXPERIMENT.json...` starts Flower's simulation engine
(Ray) once, with NODES SuperNodes running FedA2V's ClientApp, and a ServerApp that runs
FedA2V's server (`run_federation`) on each experiment in turn, on the same Grid. Each gets its
own run directory, printed one per line. Ray, the nodes' processes and their encoded clips are
started or made once, not once per experiment, which keeps a sweep over strategies cheap while
every message still goes through Flower.
"""

from __future__ import annotations

import sys
from pathlib import Path

from flwr.app import Context, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

APP_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(APP_DIR))

from client.app import app as client_app  # noqa: E402
from fed_a2v.federation.server import run_federation  # noqa: E402
from fed_a2v.launch.host import setup_process  # noqa: E402


def main(num_nodes: int, experiments: list[str]) -> None:
    server = ServerApp()

    @server.main()
    def run_all(grid: Grid, context: Context) -> None:
        setup_process()
        for path in experiments:
            summary = run_federation(grid, Context(
                run_id=context.run_id, node_id=context.node_id, node_config={},
                state=RecordDict(), run_config={"config": path}), APP_DIR)
            print(f"RUN {path} {summary['rounds']}", flush=True)

    run_simulation(server_app=server, client_app=client_app, num_supernodes=num_nodes,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
