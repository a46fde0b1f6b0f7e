"""FedA2V installed as a wheel (not editable) runs from any folder: the Flower app, its default
config and the feature path come from the installed package, not from a checkout. The wheel
requires the core alone; a core install with the `simulation` extra simulates, and says which
extra `fed-a2v generate` needs. (scripts/check_fresh_install.sh does the same from PyPI.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from test_extras import EXTRAS, NOT_CORE, PROJECT, hidden_env

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(wheels), str(ROOT)], check=True)
    return wheels


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement)[0].lower().replace("_", "-")


def test_the_wheel_requires_the_core_and_offers_the_extras(wheels: Path) -> None:
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA")))
    fields = [line.split(": ", 1) for line in meta.decode().splitlines() if ": " in line]
    assert dict(fields)["Requires-Python"] == ">=3.11"
    assert {v for k, v in fields if k == "Provides-Extra"} == {*EXTRAS, "all", "dev"}
    requires = [v for k, v in fields if k == "Requires-Dist"]
    core = [r for r in requires if "extra ==" not in r]
    assert {_name(r) for r in core} == {_name(r) for r in PROJECT["dependencies"]}
    assert any(r.startswith("flwr[dp]") for r in core), core
    for extra in EXTRAS:
        assert any(f'extra == "{extra}"' in r for r in requires), extra


def test_an_installed_wheel_simulates_from_another_folder(tmp_path: Path, wheels: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # The dependencies come from this environment; FedA2V itself only from the wheel (a path
    # line in a .pth file does not run this environment's editable-install hook).
    site = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    for script in Path(sys.executable).parent.glob("fl*"):  # flwr's commands, on the new python
        lines = script.read_text().splitlines(keepends=True)
        if lines and lines[0].startswith("#!") and "python" in lines[0]:
            target = venv / "bin" / script.name
            target.write_text(f"#!{venv / 'bin' / 'python'}\n" + "".join(lines[1:]))
            target.chmod(0o755)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--no-deps", "--no-index",
                    *map(str, wheels.glob("*.whl"))], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import fed_a2v, fed_a2v.launch.app_dir as a; "
                            "print(fed_a2v.__file__); print(a.checkout_root())"],
                           cwd=elsewhere, capture_output=True, text=True, check=True).stdout
    assert str(ROOT) not in where.splitlines()[0] and where.splitlines()[1] == "None"

    # As installed with `pip install 'fed-a2v[simulation]'`: the core and Ray, no other extra.
    env = hidden_env(tmp_path / "hide", *NOT_CORE)
    done = subprocess.run([str(venv / "bin" / "fed-a2v"), "simulate", "--rounds", "2",
                           "--output-dir", str(elsewhere / "runs")],
                          cwd=elsewhere, capture_output=True, text=True, timeout=1800, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2
    assert run_dir.parent == elsewhere / "runs"
    assert (elsewhere / "data").is_dir()  # the default corpus is made where the user stands
    assert (run_dir / "report.md").is_file() and not (run_dir / "tb").exists()

    clip = next((elsewhere / "data").rglob("*.wav"))
    done = subprocess.run([str(venv / "bin" / "fed-a2v"), "generate", str(run_dir), "--audio",
                           str(clip), "--out", str(elsewhere / "gallery")],
                          cwd=elsewhere, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1].endswith(
        "needs the `generate` extra (diffusers, accelerate, PIL not installed): "
        "pip install 'fed-a2v[generate]'")
