"""`anomalib ... --model GenAU` and get_model("GenAU") work after install, without a slow start-up.

Each check runs in a fresh interpreter, as a user's shell would.
"""

import os
import subprocess
import sys
from pathlib import Path

ANOMALIB = str(Path(sys.executable).with_name("anomalib"))


def _python(code: str, *args: str, env: dict | None = None) -> str:
    result = subprocess.run(
        [sys.executable, *args, "-c", code], capture_output=True, text=True, check=False, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def test_interpreter_start_imports_neither_torch_nor_the_plugin() -> None:
    code = (
        "import sys; "
        "print('torch' in sys.modules, 'anomalib_genau' in sys.modules, 'anomalib_genau_hook' in sys.modules)"
    )
    assert _python(code) == "False False True"


def test_the_command_help_loads_neither_torch_nor_anomalib() -> None:
    """``anomalib-genau ... --help`` only builds the parser: the package import is lazy."""
    code = (
        "import contextlib, io, sys\n"
        "from anomalib_genau.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        "    main(['export', '--help'])\n"
        "print('--weights' in out.getvalue(), 'torch' in sys.modules, 'anomalib' in sys.modules)"
    )
    assert _python(code) == "True False False"


def test_genau_is_imported_on_first_access_and_registered() -> None:
    code = (
        "import sys, anomalib_genau\n"
        "print('anomalib' in sys.modules, 'GenAU' in dir(anomalib_genau))\n"
        "import anomalib.models\n"
        "print(anomalib_genau.GenAU is anomalib.models.GenAU, anomalib_genau.GenAU.__module__)\n"
        "try:\n"
        "    anomalib_genau.NoSuchName\n"
        "except AttributeError as error:\n"
        "    print(error)"
    )
    assert _python(code).splitlines() == [
        "False True",
        "True anomalib_genau.models.genau.lightning_model",
        "module 'anomalib_genau' has no attribute 'NoSuchName'",
    ]


def test_get_model_finds_genau_by_name(tiny_backbone: Path) -> None:
    code = (
        "import sys; from anomalib.models import get_model\n"
        f"model = get_model('GenAU', backbone={str(tiny_backbone)!r})\n"
        f"by_path = get_model({{'class_path': 'GenAU', 'init_args': {{'backbone': {str(tiny_backbone)!r}}}}})\n"
        "print(type(model).__module__, type(by_path).__name__, 'anomalib_genau' in sys.modules)"
    )
    assert _python(code) == "anomalib_genau.models.genau.lightning_model GenAU True"


def test_anomalib_command_resolves_the_short_name(tiny_backbone: Path) -> None:
    result = subprocess.run(
        [
            ANOMALIB,
            "train",
            "--model",
            "GenAU",
            f"--model.backbone={tiny_backbone}",
            "--data",
            "MVTecAD",
            "--print_config",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "class_path: anomalib_genau.GenAU" in result.stdout
    assert f"backbone: {tiny_backbone}" in result.stdout


def test_cli_parses_the_dotted_path_and_the_shipped_tiny_config(repo_root: Path) -> None:
    """Both parses run in one fresh interpreter through anomalib's CLI class (``--print_config`` exits)."""
    config = repo_root / "configs" / "genau_tiny.yaml"
    code = (
        "import contextlib, io\n"
        "from anomalib.cli import AnomalibCLI\n"
        f"for args in (['train', '--model', 'anomalib_genau.GenAU', '--data', 'MVTecAD', '--print_config'],"
        f" ['train', '--config', {str(config)!r}, '--print_config']):\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "        AnomalibCLI(args, run=False)\n"
        "    print(repr(out.getvalue()))\n"
    )
    model_config, tiny_config = _python(code).splitlines()
    assert "class_path: anomalib_genau.GenAU" in model_config
    assert "class_path: anomalib_genau.data.CrossDataset" in tiny_config
    assert "backbone: ./backbones/genau-tiny" in tiny_config


def test_a_regular_wheel_install_registers_the_plugin(tmp_path: Path, repo_root: Path) -> None:
    """Build the wheel, unpack it into a site dir, and import anomalib.models from there only.

    ``-S`` skips the venv's .pth files (so the editable install's hook and path are off);
    ``site.addsitedir`` then processes the wheel's own .pth, as a regular install would.
    """
    wheel_dir, site_dir = tmp_path / "wheel", tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), str(repo_root)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    wheel = next(wheel_dir.glob("anomalib_genau-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site_dir), str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    assert (site_dir / "anomalib_genau_hook.pth").is_file()
    assert (site_dir / "anomalib_genau" / "resources" / "defect_taxonomy.yaml").is_file()
    venv_site = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    code = (
        "import sys, site\n"
        f"sys.path.append({venv_site!r})\n"
        f"site.addsitedir({str(site_dir)!r})\n"
        "print('torch' in sys.modules)\n"
        "from anomalib.models import get_model, _get_model_class_by_name\n"
        "import anomalib_genau\n"
        "print(_get_model_class_by_name('GenAU').__name__, anomalib_genau.__file__.startswith("
        f"{str(site_dir)!r}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    assert _python(code, "-S", env=env).splitlines() == ["False", "GenAU True"]
