"""setup.py's search for a usable CUDA toolkit, on fake toolkits in tmp_path (no compiler runs:
each fake nvcc is a shell script that answers --version and --dryrun like the real one)."""
from __future__ import annotations

import importlib.util
import os
import stat

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup_module():
    spec = importlib.util.spec_from_file_location("lic_quant_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines the functions; setup() runs only as __main__
    return module


def write_script(path, body):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def fake_toolkit(root, release="13.0", header=True, cudart=True, libdir="lib64"):
    """A directory laid out like a CUDA toolkit whose nvcc answers like the real one."""
    bin_dir = root / "bin"
    write_script(bin_dir / "nvcc", f"""
case "$*" in
  *--dryrun*) echo '#$ _HERE_={bin_dir}' >&2; echo '#$ _THERE_={bin_dir}' >&2 ;;
  *) echo 'nvcc: NVIDIA (R) Cuda compiler driver'
     echo 'Cuda compilation tools, release {release}, V{release}.88' ;;
esac
""")
    if header:
        (root / "include").mkdir(parents=True, exist_ok=True)
        (root / "include" / "cuda_runtime.h").write_text("")
    if cudart:
        (root / libdir).mkdir(parents=True, exist_ok=True)
        (root / libdir / "libcudart.so").write_text("")
    return root


def no_nvcc(_name):
    return None


def test_usable_toolkit_has_no_problems(setup_module, tmp_path):
    home = fake_toolkit(tmp_path / "cuda")
    assert setup_module.toolkit_problems(str(home), "13.0") == []


def test_cudart_in_lib_when_lib64_is_absent(setup_module, tmp_path):
    home = fake_toolkit(tmp_path / "cuda", libdir="lib")
    assert setup_module.toolkit_problems(str(home), "13.0") == []


@pytest.mark.parametrize("missing, expected", [
    ("header", "cuda_runtime.h"),
    ("cudart", "libcudart"),
    ("nvcc", "bin/nvcc"),
])
def test_each_missing_piece_is_named(setup_module, tmp_path, missing, expected):
    home = fake_toolkit(tmp_path / "cuda", header=missing != "header",
                        cudart=missing != "cudart")
    if missing == "nvcc":
        (home / "bin" / "nvcc").unlink()
    problems = setup_module.toolkit_problems(str(home), "13.0")
    assert len(problems) == 1 and expected in problems[0], problems


def test_nvcc_that_fails_or_mismatches_torch(setup_module, tmp_path):
    broken = fake_toolkit(tmp_path / "broken")
    write_script(broken / "bin" / "nvcc", "echo 'cannot execute' >&2; exit 126\n")
    assert "--version failed" in setup_module.toolkit_problems(str(broken), "13.0")[0]
    old = fake_toolkit(tmp_path / "old", release="12.4")
    problem, = setup_module.toolkit_problems(str(old), "13.0")
    assert "CUDA 12.4" in problem and "13.0" in problem


def test_wrapper_on_the_path_leads_to_the_real_toolkit(setup_module, tmp_path):
    """The case of issue 10: /usr/local/bin/nvcc is a script exec'ing the real nvcc, so the
    directory above the PATH's nvcc (torch's guess) has no toolkit."""
    real = fake_toolkit(tmp_path / "cuda-13.0")
    wrapper = write_script(tmp_path / "usr" / "bin" / "nvcc", f'exec {real}/bin/nvcc "$@"\n')
    homes = setup_module.candidate_homes(env={}, which=lambda _: str(wrapper))
    assert homes[0] == str(tmp_path / "usr")          # where torch looks
    assert str(real) in homes                           # what nvcc --dryrun reports
    home, tried = setup_module.find_cuda_toolkit("13.0", env={}, which=lambda _: str(wrapper))
    assert home == str(real)
    assert any("no " in p for p in tried[str(tmp_path / "usr")])


def test_symlinked_nvcc_resolves_to_its_toolkit(setup_module, tmp_path):
    real = fake_toolkit(tmp_path / "cuda-13.0")
    (tmp_path / "bin").mkdir()
    os.symlink(real / "bin" / "nvcc", tmp_path / "bin" / "nvcc")
    home, _ = setup_module.find_cuda_toolkit(
        "13.0", env={}, which=lambda _: str(tmp_path / "bin" / "nvcc"),
        run=setup_module._run)
    assert os.path.realpath(home) == str(real)


def test_cuda_home_comes_first_and_a_broken_one_is_skipped(setup_module, tmp_path):
    good = fake_toolkit(tmp_path / "good")
    other = fake_toolkit(tmp_path / "other")
    home, _ = setup_module.find_cuda_toolkit("13.0", env={"CUDA_HOME": str(good)},
                                             which=lambda _: str(other / "bin" / "nvcc"))
    assert home == str(good)
    broken = fake_toolkit(tmp_path / "broken", cudart=False)
    home, tried = setup_module.find_cuda_toolkit("13.0", env={"CUDA_HOME": str(broken)},
                                                 which=lambda _: str(other / "bin" / "nvcc"))
    assert home == str(other) and "libcudart" in tried[str(broken)][0]


def test_plan_without_toolkit_builds_cpu_or_fails_when_required(setup_module, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setattr(setup_module, "FALLBACK_CUDA_HOME", str(tmp_path / "nowhere"))
    home, why = setup_module.plan_cuda_build("13.0", env={}, which=no_nvcc)
    assert home is None and "no usable CUDA toolkit" in why and "nowhere" in why
    with pytest.raises(SystemExit, match="LIC_QUANT_CUDA=1.*nowhere.*bin/nvcc"):
        setup_module.plan_cuda_build("13.0", env={"LIC_QUANT_CUDA": "1"}, which=no_nvcc)


def test_plan_with_cpu_torch_or_cuda_off(setup_module, tmp_path):
    good = fake_toolkit(tmp_path / "cuda")
    env = {"CUDA_HOME": str(good)}
    assert setup_module.plan_cuda_build("13.0", env=env, which=no_nvcc) == (str(good), None)
    assert setup_module.plan_cuda_build("13.0", env={**env, "LIC_QUANT_CUDA": "0"},
                                        which=no_nvcc) == (None, "LIC_QUANT_CUDA=0")
    home, why = setup_module.plan_cuda_build(None, env=env, which=no_nvcc)
    assert home is None and "CPU build" in why
    with pytest.raises(SystemExit, match="CPU build"):
        setup_module.plan_cuda_build(None, env={**env, "LIC_QUANT_CUDA": "1"}, which=no_nvcc)
    with pytest.raises(SystemExit, match="LIC_QUANT_CUDA must be"):
        setup_module.plan_cuda_build("13.0", env={"LIC_QUANT_CUDA": "maybe"}, which=no_nvcc)
