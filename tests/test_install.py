"""FedA2V installed as a wheel (not editable) runs from any folder: the Flower app, its default
config and the feature path come from the installed package, not from a checkout."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_an_installed_wheel_simulates_from_another_folder(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(wheels), str(ROOT)], check=True)
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

    done = subprocess.run([str(venv / "bin" / "fed-a2v"), "simulate", "--rounds", "2",
                           "--output-dir", str(elsewhere / "runs")],
                          cwd=elsewhere, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == 2
    assert run_dir.parent == elsewhere / "runs"
    assert (elsewhere / "data").is_dir()  # the default corpus is made where the user stands
