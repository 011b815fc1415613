"""The built wheel carries the CUDA sources where tensorgrad.kernels looks for them at run time."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the .cu files and the header each includes (kernels/common.cuh), found through NVRTC's include path
CUDA_SOURCES = sorted((ROOT / "kernels").glob("*.cu")) + sorted((ROOT / "kernels").glob("*.cuh"))


def _build_wheel(out_dir: Path) -> Path:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(out_dir)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout}\n{result.stderr}"
    wheels = list(out_dir.glob("tensorgrad-*.whl"))
    assert len(wheels) == 1, f"expected one tensorgrad wheel in {out_dir}, found {wheels}"
    return wheels[0]


def test_wheel_ships_every_cuda_source_and_the_installed_package_finds_them(tmp_path):
    assert CUDA_SOURCES, f"no .cu files under {ROOT / 'kernels'}"
    wheel = _build_wheel(tmp_path / "wheel")

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for source in CUDA_SOURCES:
            member = f"tensorgrad/cuda_kernels/{source.name}"
            assert member in names, f"{source.name} is missing from the wheel (looked for {member})"
            assert archive.read(member) == source.read_bytes(), f"{member} differs from {source}"
        site = tmp_path / "site"
        archive.extractall(site)

    # Import the unpacked wheel, not the source tree, and ask the finder where the sources are.
    probe = ("from tensorgrad import kernels; "
             "print(kernels.__file__); print(kernels.kernel_source_dir())")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(site)}, timeout=120)
    assert result.returncode == 0, result.stderr
    module_file, source_dir = (Path(line) for line in result.stdout.split())
    assert module_file.is_relative_to(site), f"imported {module_file}, not the wheel's copy"
    assert source_dir == site / "tensorgrad" / "cuda_kernels"
