"""One long-lived process that runs every ClientApp task of a SuperNode started with
`--isolation process`, in place of Flower's SuperExec, which starts a fresh `flwr-clientapp`
process per message. For `benchmarks/flower_overhead.py` only: it measures what a round costs
once no process starts per message. It is built on Flower 1.42's internal Runtime API
(`AcquireTask`, and `flwr.supernode.runtime.run_clientapp`'s pull and push steps), which Flower
does not offer as a public interface, so FedA2V does not deploy this way.

    python benchmarks/flower_floor/runner.py 127.0.0.1:<the SuperNode's --port>
"""

from __future__ import annotations

import logging
import sys
import time

from flwr.cli.install import install_from_fab
from flwr.clientapp import ClientApp
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

log = logging.getLogger("runner")
POLL_SECONDS = 0.05


def runtime_client(address: str, *interceptors) -> RuntimeHttpClient:
    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=True, root_certificates=None,
        interceptors=list(interceptors), retry_invoker=make_simple_http_retry_invoker())


def run_task(address: str, token: str, apps: dict[str, ClientApp]) -> None:
    """What `flwr-clientapp` does for one task, with each FAB's ClientApp loaded once."""
    task = runtime_client(address, RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                          RuntimeTokenHttpInterceptor(token))
    beat = HeartbeatSender(make_task_heartbeat_fn_http(task))
    beat.start()
    context, status, details = None, SubStatus.FAILED, "the ClientApp raised"
    try:
        message, context, run, fab = pull_task_input(task)
        if fab.hash_str not in apps:
            install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            apps[fab.hash_str] = load(run.fab_id, run.fab_version, fab.hash_str)
        push_message(task, apps[fab.hash_str](message=message, context=context), context)
        status, details = SubStatus.COMPLETED, ""
    except Exception:
        log.exception("task failed")
    finally:
        push_task_output(task, context, status, details)
        beat.stop()
        task.close()


def main(address: str) -> None:
    acquirer = runtime_client(address, RuntimeVersionHttpInterceptor(component_name="SuperExec"))
    apps: dict[str, ClientApp] = {}
    while True:
        res = acquirer.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
        if res.HasField("task") and res.token:
            run_task(address, res.token, apps)
        else:
            time.sleep(POLL_SECONDS)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(sys.argv[1])
