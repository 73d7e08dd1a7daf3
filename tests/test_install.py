"""The wheel install path: `pip install .` into a fresh venv, then import and run an op from
outside the repository (slow: builds the kernels and installs torch from the local index)."""
import os
import subprocess
import venv
from pathlib import Path

import pytest
import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_install_in_fresh_venv(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = str(env_dir / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "TRITON_INTERPRET")}

    def pip(*args):
        subprocess.run([py, "-m", "pip", "install", "-q", *args], check=True, env=env, timeout=1200)

    # constraints.txt's pins, with torch and torchvision as this environment runs them (the
    # compatibility lane runs another torch than the pins)
    running = {"torch": torch.__version__.split("+")[0], "torchvision": torchvision.__version__.split("+")[0]}
    pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines()
            if line.split("==")[0].strip() not in running]
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("\n".join(pins + [f"{name}=={version}" for name, version in running.items()]) + "\n")
    pip("-c", str(constraints), f"torch=={running['torch']}", "setuptools", "wheel", "cmake", "ninja")
    pip("-c", str(constraints), "--no-build-isolation", "--no-deps", str(ROOT))
    code = (
        "import torch, fastnofrost, pathlib\n"
        "assert 'site-packages' in fastnofrost.__file__, fastnofrost.__file__\n"
        "from fastnofrost.nn import ScaledStdConv2d\n"
        "w = torch.randn(8, 4, 3, 3)\n"
        "out = fastnofrost.ops.scaled_weight_standardization(w, None, 1.0, 1e-5)\n"
        "assert torch.allclose(out.reshape(8, -1).mean(1), torch.zeros(8), atol=1e-5)\n"
        "y = ScaledStdConv2d(4, 8, 3)(torch.rand(1, 4, 8, 8))\n"
        "import fastnofrost.triton_kernels.ws\n"
        "print('OK', tuple(y.shape))\n"
    )
    out = subprocess.run([py, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK (1, 8, 8, 8)" in out.stdout, out.stdout + out.stderr
