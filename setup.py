"""Build and install fastnofrost.

The CPU kernels (kernels/cpu/*.cpp) are compiled by CMakeLists.txt into `fastnofrost._C`
against the torch that is already installed, so install with --no-build-isolation:

    pip install torch==2.14.1 torchvision==0.29.1
    pip install --no-build-isolation -e '.[dev]'      # or: pip install --no-build-isolation .

The Triton kernels (kernels/triton/*.py) ship as the subpackage `fastnofrost.triton_kernels`.
Console scripts: `fastnofrost-train` (fastnofrost/train.py) and `fastnofrost-evaluate`
(python -m fastnofrost.evaluate).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


def find_cmake():
    try:  # the `cmake` wheel from PyPI, if present, is new enough everywhere
        import cmake

        return os.path.join(cmake.CMAKE_BIN_DIR, "cmake")
    except ImportError:
        found = shutil.which("cmake")
        if not found:
            sys.exit("fastnofrost: building the CPU kernels needs CMake >= 3.18 (pip install cmake)")
        return found


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        try:
            import torch  # noqa: F401
        except ImportError:
            sys.exit(
                "fastnofrost: torch must be installed before building (pip install torch==2.14.1), "
                "and pip must be run with --no-build-isolation so the kernels link against it"
            )
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        cmake = find_cmake()
        config = "Debug" if self.debug else "Release"
        configure = [
            cmake, "-S", str(ROOT), "-B", str(build_dir),
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DCMAKE_BUILD_TYPE={config}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
        ]
        if shutil.which("ninja"):
            configure += ["-G", "Ninja"]
        subprocess.run(configure, check=True)
        jobs = str(os.cpu_count() or 2)
        subprocess.run([cmake, "--build", str(build_dir), "--config", config, "-j", jobs], check=True)


DEV = [
    "pytest>=8",
    "pytest-timeout",
    "timm>=1.0",
    "pyautoattack",
    "scikit-learn",
    "nvidia-dali-cuda130",
    "cmake>=3.18",
    "ninja",
]

setup(
    name="fastnofrost",
    version="0.1.0",
    description="Compiled, performance-first NoFrost (normalizer-free adversarial training) engine",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["fastnofrost", "fastnofrost.*"]) + ["fastnofrost.triton_kernels"],
    package_dir={"fastnofrost.triton_kernels": "kernels/triton"},
    ext_modules=[CMakeExtension("fastnofrost._C")],
    cmdclass={"build_ext": CMakeBuild},
    install_requires=[
        "torch>=2.11",
        "triton; platform_system == 'Linux' and platform_machine == 'x86_64'",
        "deepspeed",
        "numpy",
        "safetensors",
        "pyyaml",
        "tqdm",
        "matplotlib",
        "tensorboard",
    ],
    extras_require={
        "dali-cuda130": ["nvidia-dali-cuda130"],
        "dali-cuda120": ["nvidia-dali-cuda120"],
        "dev": DEV,
    },
    entry_points={
        "console_scripts": [
            "fastnofrost-train = fastnofrost.train:main",  # = python fastnofrost/train.py; main returns the exit code
            "fastnofrost-evaluate = fastnofrost.evaluate:cli",  # = python -m fastnofrost.evaluate
        ],
    },
    zip_safe=False,
)
