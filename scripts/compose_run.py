"""The compose `run` service: submit FedA2V to the SuperLink and exit 0 only if the run completed.

Points `flwr` at the SuperLink, waits until it answers, registers the SuperNodes' public keys
(node authentication), submits the app, streams its logs and reports how the run finished
(`flwr run` itself exits 0 even when the run fails). Read from the environment:

  SUPERLINK          host:port of the SuperLink's Control API (required)
  ROOT_CERTIFICATES  CA certificate of the SuperLink (TLS); unset: insecure
  SUPERNODE_KEYS     public keys to register, separated by spaces; already registered is fine
  FEDA2V_CONFIG      experiment JSON inside the app (default configs/quickstart.json)
  FEDA2V_ROUNDS      rounds, overriding the JSON's (default 0: the JSON's)
  APP_DIR            the app to submit (default /app/fed-a2v)
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from fed_a2v.launch.host import COMPLETED, flower_env, submit_run, wait_for_run, write_connection

CONNECTION = "compose"
log = logging.getLogger("compose-run")


def flwr(*args: str, env: dict[str, str], timeout: float = 120) -> dict:
    """A `flwr ... --format json` command's reply ({} when it printed none)."""
    done = subprocess.run(["flwr", *args, "--format", "json"], env=env, capture_output=True,
                          text=True, timeout=timeout)
    try:
        return json.loads(done.stdout[done.stdout.index("{"):])
    except ValueError:
        return {"error-message": done.stdout + done.stderr}


def wait_for_superlink(env: dict[str, str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (reply := flwr("ls", CONNECTION, env=env)).get("success"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the SuperLink did not answer in {timeout:.0f}s: "
                               f"{reply.get('error-message', reply)}")
        time.sleep(2)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    flwr_home = Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr"))
    certificates = os.environ.get("ROOT_CERTIFICATES")
    write_connection(flwr_home, CONNECTION, os.environ["SUPERLINK"],
                     Path(certificates) if certificates else None)
    env = flower_env(flwr_home)
    wait_for_superlink(env, timeout=300)
    for key in os.environ.get("SUPERNODE_KEYS", "").split():
        reply = flwr("supernode", "register", key, CONNECTION, env=env)
        log.info("register %s: %s", key, "done" if reply.get("success")
                 else reply.get("error-message", reply))
    run_config = {"config": os.environ.get("FEDA2V_CONFIG", "configs/quickstart.json"),
                  "rounds": int(os.environ.get("FEDA2V_ROUNDS", "0") or 0)}
    run_id = submit_run(Path(os.environ.get("APP_DIR", "/app/fed-a2v")), CONNECTION, env,
                        run_config)
    log.info("run %d submitted (%s)", run_id, run_config)
    subprocess.run(["flwr", "log", str(run_id), CONNECTION, "--stream"], env=env)
    # The stream ends with the run; should it break off, the run is still waited for.
    entry = wait_for_run(run_id, CONNECTION, env, timeout=7 * 24 * 3600, poll=10)
    log.info("run %d: %s (%s)", run_id, entry.get("status"), entry.get("status-details"))
    return 0 if entry.get("status") == COMPLETED else 1


if __name__ == "__main__":
    sys.exit(main())
