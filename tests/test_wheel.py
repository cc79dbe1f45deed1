"""The built wheel (``pip install .``, not editable) installs into a fresh venv and runs the README's first example.

No network: the wheel is built without build isolation (the installed setuptools) and installed with
``--no-deps --no-index`` into a fresh venv that sees the running environment's torch and triton through a
``.pth`` line (its own site-packages come first, and the running environment's editable install is not
activated: ``.pth`` files on an added path are not read). The example runs from outside the source tree.
"""

import os
import re
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIRST_EXAMPLE = re.search(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S).group(1)

CHECK_INSTALL = """
import importlib.metadata, importlib.resources, sys
import etsc_triton
root = importlib.resources.files("etsc_triton")
assert sys.prefix in etsc_triton.__file__, etsc_triton.__file__
assert (root / "py.typed").is_file()
for family in ("lsh", "prefill", "ssm", "toeplitz"):
    assert (root / "ops" / family / "README.md").read_text().startswith("#"), family
license_files = [f for f in importlib.metadata.files("etsc_triton") if f.name == "LICENSE"]
assert license_files and "MIT License" in license_files[0].read_text()
print(etsc_triton.__file__)
"""


def _setuptools_builds_wheels() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return tuple(int(p) for p in setuptools.__version__.split(".")[:1]) >= (77,)


@pytest.mark.skipif(not _setuptools_builds_wheels(), reason="building without network needs setuptools>=77 installed")
def test_installed_wheel_runs_first_example(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]

    def run(args, **kwargs):
        proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, **kwargs)
        assert proc.returncode == 0, f"{args[:4]}...\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
        return proc

    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(tmp_path / "dist"),
         str(REPO)])
    wheels = list((tmp_path / "dist").glob("etsc_triton-*.whl"))
    assert len(wheels) == 1, wheels
    run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")])
    python = str(tmp_path / "venv" / "bin" / "python")
    venv_site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    parent_site = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    Path(venv_site, "running_environment.pth").write_text("\n".join(dict.fromkeys(parent_site)) + "\n")
    run([*pip, "--python", python, "install", "--no-deps", "--no-index", "-q", str(wheels[0])])

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    installed = run([python, "-c", CHECK_INSTALL], cwd=outside).stdout.strip()
    assert installed.startswith(str(tmp_path / "venv")), installed
    run([python, "-c", FIRST_EXAMPLE + "\nassert y.shape == (2, 40, D) and y_next.shape == (2, D)\n"], cwd=outside)
