"""Static checks of the compose files: services, commands, ports, mounts and node configs agree
with each other, with the image recipe and with the pinned flwr version. `make test-compose`
(scripts/test_compose.sh) runs the federations for real on a Docker engine."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import flwr
import pytest
import yaml

from fed_a2v.config.load import load_config, load_node_config

ROOT = Path(__file__).resolve().parent.parent
FLWR_VERSION = flwr.__version__
RECIPE = ROOT / "server" / "Dockerfile"
APP_IMAGE = "feda2v:latest"


def with_defaults(node):
    """Compose's `${VAR:-default}` as it reads with VAR unset."""
    if isinstance(node, dict):
        return {k: with_defaults(v) for k, v in node.items()}
    if isinstance(node, list):
        return [with_defaults(v) for v in node]
    if isinstance(node, str):
        return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", node)
    return node


def load(name: str) -> dict:
    return with_defaults(yaml.safe_load((ROOT / name).read_text())["services"])


def image_folders() -> set[str]:
    """The folders the FedA2V image makes (and gives to app) for volumes."""
    made = re.search(r"RUN mkdir -p ([^&]+)&& chown -R app:app /app", RECIPE.read_text())
    return set(made[1].split())


def arg(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


@pytest.fixture(scope="module")
def services() -> dict:
    return load("docker-compose.yml")


def supernodes(services: dict) -> dict:
    return {k: v for k, v in services.items() if re.fullmatch(r"supernode-\d+", k)}


def test_images_and_recipes_pin_the_installed_flwr(services: dict) -> None:
    assert services["superlink"]["image"] == f"flwr/superlink:{FLWR_VERSION}"
    for name in supernodes(services):
        assert services[name]["image"] == f"flwr/supernode:{FLWR_VERSION}"
    text = RECIPE.read_text()
    assert f"ARG FLWR_VERSION={FLWR_VERSION}" in text
    assert "FROM flwr/superexec:${FLWR_VERSION}" in text
    assert 'ENTRYPOINT ["flower-superexec"]' in text
    for name, service in services.items():
        if "build" in service:
            assert service["build"]["args"]["FLWR_VERSION"] == FLWR_VERSION, name
            assert (ROOT / service["build"]["dockerfile"]).resolve() == RECIPE, name
            assert service["image"] == APP_IMAGE, name  # one image for every FedA2V container
    pins = (ROOT / "pyproject.toml").read_text()
    major_minor = ".".join(FLWR_VERSION.split(".")[:2])
    assert f'"flwr[dp]>={major_minor}' in pins


def test_client_recipe_is_the_server_recipe() -> None:
    assert (ROOT / "client" / "Dockerfile").resolve() == RECIPE


def test_every_named_volume_is_mounted_on_a_folder_owned_by_app(services: dict) -> None:
    """A named volume mounted where the image has no folder is created owned by root, and the
    images run as app (uid 49999): the SuperLink could not open its database."""
    declared = set(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["volumes"])
    for name, service in services.items():
        owned = image_folders() if service["image"] == APP_IMAGE else {"/app"}  # flwr images
        for mount in service.get("volumes", []):
            source, target = mount.split(":")[:2]
            if source in declared:
                assert target in owned, f"{name}: volume {source} on {target}, not in {owned}"
    database = Path(arg(services["superlink"]["command"], "--database"))
    assert f"superlink-state:{database.parent}" in services["superlink"]["volumes"]


def image_requirements(*extras: str) -> dict[str, str]:
    """What scripts/install_app_in_image.sh installs: requirement name -> its extras ("[dp]")."""
    venv_first = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    done = subprocess.run(["sh", str(ROOT / "scripts" / "install_app_in_image.sh"),
                           "requirements", *extras], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PATH": venv_first}, check=True)
    found = [re.match(r"([A-Za-z0-9_.-]+)(\[[^]]*\])?", line)
             for line in done.stdout.splitlines()]
    return {m[1].lower(): m[2] or "" for m in found}


# What the node image must not carry: every optional extra's packages (pyproject.toml).
OPTIONAL = {"ray", "diffusers", "accelerate", "pillow", "matplotlib", "tensorboard", "wandb",
            "espeakng-loader", "pretty-midi"}


def test_the_image_installs_what_a_node_needs_and_no_more(services: dict) -> None:
    """The FedA2V image (every FedA2V container's, the nodes' among them) installs the core
    dependencies alone: Flower with its privacy accountant (the ServerApp runs it), no Ray, no
    diffusers, plots or corpora packages. FEDA2V_EXTRAS adds extras, and compose asks for none."""
    import tomllib

    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    found = image_requirements()
    assert set(found) == {re.match(r"[A-Za-z0-9_.-]+", line)[0].lower() for line in core}
    assert {"flwr", "torch", "transformers"} <= set(found), found
    assert not OPTIONAL & set(found), OPTIONAL & set(found)
    assert "dp" in found["flwr"], "the server's privacy accountant needs flwr[dp]"
    assert "simulation" not in found["flwr"], found["flwr"]
    with_plots = image_requirements("plots")
    assert set(with_plots) - set(found) == {"matplotlib", "tensorboard"}
    recipe = RECIPE.read_text()
    assert 'ARG FEDA2V_EXTRAS=""' in recipe
    assert 'install_app_in_image.sh requirements "${FEDA2V_EXTRAS}"' in recipe
    assert 'install_app_in_image.sh app "${FEDA2V_EXTRAS}"' in recipe
    for name, service in services.items():
        if "build" in service:
            assert "FEDA2V_EXTRAS" not in service["build"].get("args", {}), name


def test_every_process_listens_on_all_interfaces(services: dict) -> None:
    for name in ["superlink", *supernodes(services)]:
        assert arg(services[name]["command"], "--host") == "0.0.0.0", name


def test_ports_and_addresses_agree(services: dict) -> None:
    link_port = arg(services["superlink"]["command"], "--port")
    assert f"{link_port}:{link_port}" in services["superlink"]["ports"]
    assert arg(services["superexec-serverapp"]["command"],
               "--runtime-api-address") == f"superlink:{link_port}"
    assert services["run"]["environment"]["SUPERLINK"] == f"superlink:{link_port}"
    node_ports = set()
    for name, node in supernodes(services).items():
        assert arg(node["command"], "--superlink") == f"superlink:{link_port}"
        port = arg(node["command"], "--port")
        node_ports.add(port)
        assert arg(node["command"], "--isolation") == "process"
        executor = services[f"superexec-clientapp-{name.split('-')[1]}"]
        assert arg(executor["command"], "--runtime-api-address") == f"{name}:{port}"
        assert name in executor["depends_on"]
    assert len(node_ports) == len(supernodes(services))
    assert arg(services["superlink"]["command"], "--isolation") == "process"


def test_three_nodes_each_with_its_own_json_data_and_cache(services: dict) -> None:
    nodes = supernodes(services)
    assert len(nodes) >= 3
    split_ids, volumes = set(), set()
    for name, node in nodes.items():
        index = name.split("-")[1]
        inside = re.fullmatch(r"node-config='(.+)'", arg(node["command"], "--node-config"))[1]
        executor = services[f"superexec-clientapp-{index}"]
        mounts = {m.split(":")[1]: m.split(":")[0] for m in executor["volumes"]}
        host_file = ROOT / mounts[inside]  # the ClientApp reads the file: it is mounted there
        settings = load_node_config(host_file)
        assert settings.num_nodes == len(nodes)
        split_ids.add(settings.node_split_id)
        assert mounts[str(Path(settings.dataset_path).parent)] == f"node-{index}-data"
        assert mounts[settings.cache_dir] == f"node-{index}-cache"
        volumes.update(v for k, v in mounts.items() if k != inside)
    assert split_ids == set(range(len(nodes)))  # disjoint shards
    assert len(volumes) == 2 * len(nodes)  # nobody shares data or cache
    declared = set(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["volumes"])
    assert volumes <= declared


def test_outputs_land_on_a_volume(services: dict) -> None:
    mounts = dict(m.split(":")[::-1] for m in services["superexec-serverapp"]["volumes"])
    assert mounts["/app/runs"] == "runs"
    assert "WORKDIR /app\n" in (ROOT / "server/Dockerfile").read_text()  # runs/ is /app/runs


def test_the_run_service_submits_the_app(services: dict) -> None:
    run = services["run"]
    script = Path(run["entrypoint"][-1])
    assert script.parent.parent == Path("/app/fed-a2v")  # where the recipe copies the app
    assert (ROOT / script.relative_to("/app/fed-a2v")).is_file()
    assert "COPY --chown=app:app . .\n" in RECIPE.read_text()
    allowed = (ROOT / ".dockerignore").read_text().splitlines()
    assert {"!fed_a2v", "!server", "!client", "!configs", "!scripts"} <= set(allowed)
    for config in (run["environment"]["FEDA2V_CONFIG"], "configs/compose_check.json"):
        assert load_config(ROOT / config).federation.num_clients == len(supernodes(services))
    assert set(run["depends_on"]) >= {"superexec-serverapp",
                                                  *(f"superexec-clientapp-{n.split('-')[1]}"
                                                    for n in supernodes(services))}


def test_tls_override_uses_what_the_credentials_script_makes(services: dict) -> None:
    tls = load("docker-compose.tls.yml")
    script = (ROOT / "scripts" / "make_credentials.sh").read_text()
    link = tls["superlink"]["command"]
    assert "--insecure" not in link and "--enable-supernode-auth" in link
    mounts = dict(m.split(":")[:2][::-1] for m in tls["superlink"]["volumes"])
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile"):
        inside = Path(arg(link, flag))
        host = Path(mounts[str(inside.parent)]) / inside.name
        assert host.parts[:2] == ("credentials", "certificates")
        assert f'"$certs/{inside.name}"' in script
    assert "--insecure" not in tls["superexec-serverapp"]["command"]
    for name in supernodes(services):
        command = tls[name]["command"]
        assert "--insecure" not in command
        assert arg(command, "--port") == arg(services[name]["command"], "--port")
        assert arg(command, "--node-config") == arg(services[name]["command"], "--node-config")
        key = arg(command, "--auth-supernode-private-key")
        assert any(m.endswith(f":{key}:ro") for m in tls[name]["volumes"])
        assert f"{key}.pub" in tls["run"]["environment"]["SUPERNODE_KEYS"].split()
        assert any(m.endswith(f":{key}.pub:ro") for m in tls["run"]["volumes"])
    assert tls["run"]["environment"]["ROOT_CERTIFICATES"] == arg(
        tls["superexec-serverapp"]["command"], "--root-certificates")
    assert "DNS:superlink" in script  # the certificate is valid for the compose service name
