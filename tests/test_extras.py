"""Optional extras (fed_a2v/extras.py, pyproject.toml's [project.optional-dependencies]): the core
install runs a federation; a command that needs a missing extra says which one in one line and
exits 2; what a run can do without (TensorBoard events, report plots) is skipped with a warning.

The "not installed" here is real to the code under test: a `sitecustomize` on PYTHONPATH hides
the named top-level modules from every import finder, so `importlib.util.find_spec` returns None
and `import` raises ModuleNotFoundError, in the CLI's process and in any process it starts.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from fed_a2v.extras import EXTRAS, MissingExtra, install_command, missing, require

from drills import experiment_dict

ROOT = Path(__file__).resolve().parent.parent
FED_A2V = Path(sys.executable).parent / "fed-a2v"


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


PROJECT = _project()

SITECUSTOMIZE = '''\
"""Hides the top-level modules named in $FEDA2V_TEST_HIDE (commas) from every import finder."""
import os
import sys

_HIDDEN = {m for m in os.environ.get("FEDA2V_TEST_HIDE", "").split(",") if m}


class _Hiding:
    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _HIDDEN:
            return None
        return self._finder.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self._finder, attr)


sys.meta_path[:] = [_Hiding(f) for f in sys.meta_path]
'''

# Every module the core install lacks, but Ray (the `simulation` extra).
NOT_CORE = tuple(m for extra, modules in EXTRAS.items() if extra != "simulation"
                 for m in modules)


def hidden_env(folder: Path, *modules: str) -> dict[str, str]:
    """The environment of a process (and its children) in which `modules` are not installed."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "FEDA2V_TEST_HIDE": ",".join(modules)}


def fed_a2v(tmp_path: Path, hide: tuple[str, ...], *args: str,
            timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(FED_A2V), *args], cwd=tmp_path, capture_output=True, text=True,
                          env=hidden_env(tmp_path / "hide", *hide), timeout=timeout)


def assert_names_extra(done: subprocess.CompletedProcess, extra: str) -> str:
    """Exit 2, and one line on stderr naming `extra` and its install command; no traceback."""
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    said = [line for line in done.stderr.splitlines() if "extra" in line]
    assert len(said) == 1, done.stderr[-2000:]
    assert f"the `{extra}` extra" in said[0] and install_command(extra) in said[0], said[0]
    return said[0]


def write_experiment(tmp_path: Path, name: str, **sections) -> Path:
    path = tmp_path / f"{name}.json"
    experiment = experiment_dict(tmp_path, name, output_dir=tmp_path / "runs",
                                 **{k: v for k, v in sections.items() if k != "wandb"})
    if "wandb" in sections:
        experiment["wandb"] = sections["wandb"]
    path.write_text(json.dumps(experiment))
    return path


# --- the table and the message ---------------------------------------------------------------

def _names(lines: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~;\s]", line, maxsplit=1)[0].lower().replace("_", "-")
            for line in lines}


def test_the_extras_table_is_pyprojects() -> None:
    """Each extra of fed_a2v.extras is one of pyproject.toml's, and the packages that bring its
    modules are the ones that extra installs; the core installs none of them."""
    optional = PROJECT["optional-dependencies"]
    assert set(optional) == {*EXTRAS, "all", "dev"}
    assert optional["all"] == [f"fed-a2v[{','.join(EXTRAS)}]"]
    assert "fed-a2v[all]" in optional["dev"] and "import-linter>=2.2" in optional["dev"]
    providers = packages_distributions()  # import name -> distributions (all installed here)
    core = _names(PROJECT["dependencies"])
    for extra, modules in EXTRAS.items():
        listed = _names(optional[extra])
        for module in modules:
            if module == "ray":  # Ray comes with Flower's own `simulation` extra
                assert optional[extra] == ["flwr[simulation]>=1.42,<1.43"]
                continue
            dists = {d.lower().replace("_", "-") for d in providers[module]}
            assert dists & listed, f"{module} ({dists}) is not in the `{extra}` extra"
            assert not dists & core, f"{module} is in the core dependencies"
    flwr = next(line for line in PROJECT["dependencies"] if line.startswith("flwr"))
    assert flwr.startswith("flwr[dp]"), "the server's privacy accountant needs flwr[dp]"


def test_requires_python_is_what_flower_needs() -> None:
    from importlib.metadata import metadata

    assert metadata("flwr")["Requires-Python"].startswith(">=3.11")
    assert PROJECT["requires-python"] == ">=3.11"


def test_missing_extra_is_one_line_naming_the_extra() -> None:
    assert missing("json", "no_such_module_for_feda2v") == ["no_such_module_for_feda2v"]
    require("generate", "json", what="nothing")  # present: no error
    with pytest.raises(MissingExtra) as caught:
        require("generate", "json", "no_such_module_for_feda2v", what="`fed-a2v generate`")
    message = str(caught.value)
    assert message == ("`fed-a2v generate` needs the `generate` extra (no_such_module_for_feda2v "
                       "not installed): pip install 'fed-a2v[generate]'")
    assert isinstance(caught.value, ImportError) and caught.value.extra == "generate"
    again = pickle.loads(pickle.dumps(caught.value))  # crosses processes (Ray, Flower) intact
    assert str(again) == message and again.extra == "generate"


# --- commands that need an extra exit 2 naming it ---------------------------------------------

@pytest.mark.slow
def test_generate_without_the_generate_extra(tmp_path: Path) -> None:
    done = fed_a2v(tmp_path, ("diffusers",), "generate", str(tmp_path / "no-run"),
                   "--audio", str(tmp_path / "a.wav"), "--out", str(tmp_path / "out"))
    line = assert_names_extra(done, "generate")
    assert line == ("error: `fed-a2v generate` needs the `generate` extra (diffusers not "
                    "installed): pip install 'fed-a2v[generate]'")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_simulate_without_the_simulation_extra(tmp_path: Path) -> None:
    config = write_experiment(tmp_path, "noray")
    done = fed_a2v(tmp_path, ("ray",), "simulate", "--config", str(config))
    assert "`fed-a2v simulate`" in assert_names_extra(done, "simulation")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "server-data").exists()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["report", "study batch-size", "study federation"])
def test_plots_without_the_plots_extra(tmp_path: Path, command: str) -> None:
    config = write_experiment(tmp_path, "noplots")
    args = ([str(tmp_path / "run")] if command == "report" else ["--config", str(config)])
    done = fed_a2v(tmp_path, ("matplotlib",), *command.split(), *args)
    assert f"`fed-a2v {command}`" in assert_names_extra(done, "plots")


@pytest.mark.slow
def test_wandb_asked_for_without_the_wandb_extra(tmp_path: Path) -> None:
    config = write_experiment(tmp_path, "nowandb", wandb={"disabled": False, "mode": "offline"})
    assert_names_extra(fed_a2v(tmp_path, ("wandb",), "validate", str(config)), "wandb")
    # A node does not log to W&B: its own check does not ask for the extra.
    node = tmp_path / "node.json"
    node.write_text(json.dumps({"node_split_id": 0, "num_nodes": 3}))
    done = fed_a2v(tmp_path, ("wandb",), "validate", str(config), "--node", str(node))
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_builtin_speech_corpus_without_the_corpora_extra(tmp_path: Path) -> None:
    config = write_experiment(tmp_path, "speech", dataset={"name": "speech"})
    done = fed_a2v(tmp_path, ("espeakng_loader",), "simulate", "--config", str(config))
    assert "the built-in speech corpus" in assert_names_extra(done, "corpora")
    assert not (tmp_path / "server-data").exists()  # nothing half made
    node = tmp_path / "node.json"
    node.write_text(json.dumps({"node_split_id": 0, "num_nodes": 3}))
    done = fed_a2v(tmp_path, ("espeakng_loader",), "validate", str(config), "--node", str(node))
    assert_names_extra(done, "corpora")
    # The synthetic corpus is the core's: the same node validates with it.
    synthetic = write_experiment(tmp_path, "synthetic")
    done = fed_a2v(tmp_path, NOT_CORE, "validate", str(synthetic), "--node", str(node))
    assert done.returncode == 0, done.stderr[-2000:]


# --- a run on the core alone -------------------------------------------------------------------

RUN = '''\
import json, sys
from pathlib import Path
from drills import LoopbackGrid, experiment_dict, run_in_process

root = Path(sys.argv[1])
experiment = experiment_dict(root, "core", output_dir=root / "runs",
                             federation={"global_rounds": 2, "num_clients": 2, "min_clients": 2},
                             dataset={"clips_per_class": 8})
experiment["experiment"]["cache_dir"] = str(root / "cache")
print(run_in_process(experiment, root / "core.json", LoopbackGrid(2)))
'''


@pytest.mark.slow
def test_a_run_on_the_core_alone_writes_its_metrics_and_report(tmp_path: Path) -> None:
    """No extra at all: the federation trains and writes metrics.jsonl, summary.json and
    report.md, with one warning that TensorBoard events and plots are skipped; `fed-a2v embed`
    (conditioning tensors, no images) works on its adapters."""
    script = tmp_path / "run.py"
    script.write_text(RUN)
    env = hidden_env(tmp_path / "hide", *NOT_CORE, "ray")
    env["PYTHONPATH"] += os.pathsep + str(ROOT / "tests")
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    rounds = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    assert json.loads((run_dir / "summary.json").read_text())["rounds"] == 2
    report = (run_dir / "report.md").read_text()
    assert "| metric | final | round |" in report and install_command("plots") in report
    assert not (run_dir / "tb").exists() and not list(run_dir.glob("plot_*.png"))
    warnings = [line for line in done.stderr.splitlines() if "extra" in line]
    assert len(warnings) == 1, warnings
    assert ("TensorBoard events and report plots skipped: the `plots` extra is not installed "
            f"(matplotlib, tensorboard missing): {install_command('plots')}") in warnings[0]

    clip = next((tmp_path / "server-data" / "audio").glob("*.wav"))
    out = tmp_path / "embedded.safetensors"
    done = fed_a2v(tmp_path, (*NOT_CORE, "ray"), "embed", str(run_dir), "--audio", str(clip),
                   "--out", str(out), "--cache-dir", str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.is_file()
