"""FedA2V ServerApp: wires `fed_a2v.federation.server` into Flower."""

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fed_a2v.federation.server import run_federation
from fed_a2v.launch.host import setup_process

APP_DIR = Path(__file__).resolve().parent.parent

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    setup_process()
    run_federation(grid, context, APP_DIR)
