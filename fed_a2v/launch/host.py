"""Flower's own processes on this host: a SuperLink, SuperNodes, `flwr run`, and waiting for a run.

Used by `fed-a2v simulate` and by the tests that run real deployments on loopback. Each caller
gives its own `FLWR_HOME`, so connections, installed apps and state never mix.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

FINISHED = "finished:"
COMPLETED = "finished:completed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment for Flower's commands: this venv's binaries first, a private FLWR_HOME."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    return env


def write_connection(flwr_home: Path, name: str, address: str,
                     root_certificates: Path | None = None) -> None:
    """Make `name` the default SuperLink connection in `$FLWR_HOME/config.toml`."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]",
             f'address = "{address}"']
    lines.append(f'root-certificates = "{root_certificates}"' if root_certificates
                 else "insecure = true")
    (flwr_home / "config.toml").write_text("\n".join(lines) + "\n")


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children first), from `ps`."""
    listing = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True)
    children: dict[int, list[int]] = {}
    for line in listing.stdout.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


class Process:
    """A long-running Flower process in its own process group, its output in a log file."""

    def __init__(self, args: Sequence[str], env: dict[str, str], log_path: Path,
                 cwd: Path | None = None) -> None:
        self.args = list(args)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(self.args, env=env, cwd=cwd, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process and every descendant, give it `timeout` seconds, then SIGKILL
        all that is left. A SuperLink starts its app processes in sessions of their own, so
        its process group alone would leave them running."""
        family = [self.proc.pid, *descendants(self.proc.pid)]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in family:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.proc.wait()
        self._log.close()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_for_port(port: int, process: Process, timeout: float = 300.0) -> None:
    """Wait until the process listens on `port`; its exit is an error (the limit only catches
    a hang)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"{process.args[0]} exited early:\n{process.tail()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{process.args[0]} did not open port {port} in {timeout:.0f}s")


def start_superlink(env: dict[str, str], port: int, log_path: Path, simulation: bool = False,
                    extra: Sequence[str] = (), cwd: Path | None = None) -> Process:
    args = ["flower-superlink", "--host", "127.0.0.1", "--port", str(port),
            "--disable-runtime-dependency-installation", *extra]
    if "--ssl-certfile" not in extra:
        args.append("--insecure")
    if simulation:
        args.append("--simulation")
    process = Process(args, env, log_path, cwd)
    wait_for_port(port, process)
    return process


# How often a SuperNode's SuperExec asks for a message to start a ClientApp process for, in
# seconds: Flower's default is 1.0 (this environment variable, 0.01 to 60, sets it); each train
# and evaluate message of a round waits for it, and an ask costs one loopback call.
SUPEREXEC_POLL = ("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1")


def start_supernode(env: dict[str, str], superlink: str, port: int, node_config: Path,
                    log_path: Path, extra: Sequence[str] = ()) -> Process:
    """A SuperNode reading its own JSON (`node-config`), serving its Runtime API on `port`;
    its SuperExec polls every `SUPEREXEC_POLL` seconds unless `env` says otherwise."""
    args = ["flower-supernode", "--superlink", superlink, "--host", "127.0.0.1",
            "--port", str(port), "--node-config", f"node-config='{node_config}'", *extra]
    if "--root-certificates" not in extra:
        args.append("--insecure")
    process = Process(args, {SUPEREXEC_POLL[0]: SUPEREXEC_POLL[1], **env}, log_path)
    wait_for_port(port, process)
    return process


def _config_args(flag: str, values: dict[str, Any]) -> list[str]:
    out = []
    for key, value in values.items():
        if isinstance(value, str):
            if "'" in value:
                raise ValueError(f"{key}: a single quote cannot be passed to flwr ({value})")
            value = f"'{value}'"
        elif isinstance(value, bool):
            value = str(value).lower()
        out += [flag, f"{key}={value}"]
    return out


def submit_run(app_dir: Path, connection: str, env: dict[str, str],
               run_config: dict[str, Any] | None = None,
               federation_config: dict[str, Any] | None = None) -> int:
    """`flwr run`; returns the run id. Raises with flwr's own words when it refuses."""
    args = ["flwr", "run", str(app_dir), connection, "--format", "json",
            *_config_args("--run-config", run_config or {}),
            *_config_args("--federation-config", federation_config or {})]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    try:
        reply = json.loads(done.stdout[done.stdout.index("{"):])
    except ValueError:
        reply = {}
    if done.returncode != 0 or not reply.get("success"):
        raise RuntimeError(f"flwr run failed ({done.returncode}): {done.stdout}{done.stderr}")
    return int(reply["run-id"])


def run_status(run_id: int, connection: str, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(["flwr", "ls", connection, "--run-id", str(run_id), "--format", "json"],
                          env=env, capture_output=True, text=True, timeout=120)
    try:
        runs = json.loads(done.stdout[done.stdout.index("{"):]).get("runs", [])
    except ValueError as err:
        raise RuntimeError(f"flwr ls failed: {done.stdout}{done.stderr}") from err
    return next((r for r in runs if str(r.get("run-id")) == str(run_id)), {})


def wait_for_run(run_id: int, connection: str, env: dict[str, str], timeout: float,
                 poll: float = 2.0) -> dict[str, Any]:
    """Poll `flwr ls` until the run is finished; returns its entry (status in `status`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = run_status(run_id, connection, env)
        if str(entry.get("status", "")).startswith(FINISHED):
            return entry
        time.sleep(poll)
    raise TimeoutError(f"run {run_id} did not finish in {timeout:.0f}s")


def setup_process(level: int = logging.INFO) -> None:
    """Show `fed_a2v` INFO lines on stderr; one torch thread unless FEDA2V_TORCH_THREADS says."""
    logger = logging.getLogger("fed_a2v")
    if logger.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    # Simulated nodes share the machine's cores; one intra-op thread each avoids thrashing.
    torch.set_num_threads(int(os.environ.get("FEDA2V_TORCH_THREADS", "1")))
