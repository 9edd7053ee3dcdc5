"""Every kernel source compiles with NVRTC for each architecture CI targets, no GPU needed.

NVRTC comes from the nvidia-cuda-nvrtc-cu12 wheel through cupy_backends (.ci/run installs
both; GPURNN_REQUIRE_KERNEL_TOOLS=1 there turns a missing compiler into a failure instead
of a skip).
"""
import os
import re
import shutil
import tomllib
from pathlib import Path

import pytest

from gpurnn.engine.gpu import kernels


def _nvrtc_problem():
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
    except Exception as error:  # ImportError, or the library not found
        return (f"NVRTC is not loadable ({error!r}); pip install cupy-cuda12x "
                f"nvidia-cuda-nvrtc-cu12")
    return None


_PROBLEM = None if os.environ.get("GPURNN_REQUIRE_KERNEL_TOOLS") == "1" else _nvrtc_problem()
pytestmark = pytest.mark.skipif(_PROBLEM is not None, reason=str(_PROBLEM))

_DECLARED = re.compile(r'extern "C" __global__ void (\w+)_##S\(')


@pytest.mark.parametrize("arch", kernels.ARCHS)
@pytest.mark.parametrize("source", kernels.source_names())
def test_every_source_compiles(source, arch):
    ptx = kernels.compile_ptx(source, arch)
    assert f".target sm_{arch.split('_')[1]}" in ptx
    for name, spec in kernels.KERNELS.items():
        if spec.source == source:
            for dtype in spec.dtypes:               # the 16-bit ones for steps and softmax
                assert f".entry {kernels.function_name(name, dtype)}(" in ptx


def test_the_16bit_instantiations_use_the_hardware_conversions():
    """half and bfloat16 loads widen with cvt.f32.{f16,bf16} (or a shift, exact), stores
    round with cvt.rn.{f16,bf16}.f32 and the maths is float32: no f16/bf16 arithmetic."""
    ptx = kernels.compile_ptx("gated.cu", "compute_80")
    entry = ptx[ptx.index(".entry lstm_step_bf16("):]
    entry = entry[:entry.index(".entry", 1)] if ".entry" in entry[1:] else entry
    assert "cvt.rn.bf16.f32" in entry
    assert "ld.global.u16" in entry or "ld.global.b16" in entry
    entry = ptx[ptx.index(".entry lstm_step_f16("):]
    assert "cvt.rn.f16.f32" in entry and "cvt.f32.f16" in entry
    for forbidden in ("add.f16", "mul.f16", "fma.rn.f16", "add.bf16", "fma.rn.bf16"):
        assert forbidden not in ptx


def test_the_table_lists_every_kernel_of_the_sources():
    declared = {(source, name) for source in kernels.source_names()
                for name in _DECLARED.findall((kernels.source_dir() / source).read_text())}
    listed = {(spec.source, name) for name, spec in kernels.KERNELS.items()}
    assert declared == listed


def test_a_planted_error_fails_with_the_compiler_log(tmp_path):
    copy = tmp_path / "kernels"
    shutil.copytree(kernels.source_dir(), copy,
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    header = copy / "common.cuh"
    header.write_text(header.read_text() + '\n#error "planted fault"\n')
    for source in kernels.source_names(copy):
        with pytest.raises(kernels.KernelCompileError) as caught:
            kernels.compile_ptx(source, "compute_90", directory=copy)
        message = str(caught.value)
        assert "planted fault" in message and "common.cuh" in message  # the log, with #line


def test_expanded_sources_are_self_contained():
    for source in kernels.source_names():
        text = kernels.expand(source)
        assert '#include "' not in text and "#pragma once" not in text


def test_an_installed_package_carries_the_sources():
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    data = pyproject["tool"]["setuptools"]["package-data"]["gpurnn.engine.gpu.kernels"]
    assert {"*.cu", "*.cuh", "host/*.cpp", "host/*.h"} <= set(data)
