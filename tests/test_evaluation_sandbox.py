"""The code sandbox: hostile programs end as failures and the caller's files stay as they were."""

import os

import pytest

from d2cache_jax.evaluation import sandbox

LIMITS = sandbox.SandboxLimits(timeout_s=3.0, memory_mb=512)


def run(code):
    return sandbox.run_program(code, LIMITS)


@pytest.fixture
def victim(tmp_path):
    """A file of the caller's that no program may change."""
    path = tmp_path / "precious.txt"
    path.write_text("original")
    return path


def test_good_program_passes_and_may_use_its_own_folder():
    result = run("import math\nopen('scratch.txt', 'w').write('x')\nassert open('scratch.txt').read() == 'x'\n"
                 "print('hello', math.sqrt(4))\n")
    assert result.passed and result.status == "passed" and result.stdout.strip() == "hello 2.0"


def test_failing_assert_fails():
    result = run("assert 1 + 1 == 3\n")
    assert not result.passed and result.status == "failed" and "AssertionError" in result.stderr


def test_infinite_loop_is_killed_at_the_time_limit():
    result = run("while True:\n    pass\n")
    assert result.status == "timeout" and not result.passed
    assert result.wall_s < LIMITS.timeout_s + 2


def test_memory_bomb_fails():
    result = run("blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 1024 * 1024))\n")
    assert not result.passed
    assert result.status == "timeout" or "MemoryError" in result.stderr


def test_network_is_refused():
    code = ("import socket\ns = socket.create_connection(('127.0.0.1', 9), timeout=1)\n")
    result = run(code)
    assert not result.passed and "PermissionError" in result.stderr


def test_write_outside_its_folder_fails_and_the_file_is_unchanged(victim):
    result = run(f"open({str(victim)!r}, 'w').write('pwned')\n")
    assert not result.passed and "PermissionError" in result.stderr
    assert victim.read_text() == "original"


@pytest.mark.parametrize("code", [
    "import os\nos.remove({path!r})\n",
    "import os\nos.rename({path!r}, {path!r} + '.moved')\n",
    "import os\nfd = os.open({path!r}, os.O_WRONLY | os.O_TRUNC)\n",
    "import os\nd = os.open({folder!r}, os.O_RDONLY)\nos.open('precious.txt', os.O_WRONLY | os.O_TRUNC, dir_fd=d)\n",
    "import os\nos.symlink({path!r}, 'link')\nopen('link', 'w').write('pwned')\n",
    "import os\nos.chdir({folder!r})\nopen('precious.txt', 'w').write('pwned')\n",
    "import shutil\nshutil.rmtree({folder!r})\n",
])
def test_other_ways_to_touch_caller_files_fail(victim, code):
    result = run(code.format(path=str(victim), folder=str(victim.parent)))
    assert not result.passed
    assert victim.read_text() == "original" and sorted(os.listdir(victim.parent)) == ["precious.txt"]


@pytest.mark.parametrize("code", [
    "import os\nos.system('echo pwned > {path}')\n",
    "import subprocess\nsubprocess.run(['sh', '-c', 'echo pwned > {path}'])\n",
    "import os\nos.execv('/bin/sh', ['sh', '-c', 'echo pwned > {path}'])\n",
    "import os\nif os.fork() == 0:\n    open({path!r}, 'w').write('pwned')\n",
    "import ctypes\nctypes.CDLL(None).system(b'echo pwned > {path}')\n",
])
def test_process_creation_fails(victim, code):
    result = run(code.format(path=str(victim)))
    assert not result.passed and "PermissionError" in result.stderr
    assert victim.read_text() == "original"


@pytest.mark.parametrize("code", ["import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n",
                                  "raise SystemExit\n"])
def test_exiting_early_is_not_a_pass(code):
    assert not run(code + "assert False\n").passed


def test_main_guard_does_not_run():
    assert run("if __name__ == '__main__':\n    raise ValueError\n").passed


def test_environment_is_clean_and_cwd_is_a_temp_folder():
    result = run("import os\nprint(sorted(os.environ))\nprint(os.getcwd())\n")
    names, cwd = result.stdout.strip().split("\n")
    assert result.passed and "D2C_SANDBOX_MARKER" not in names and "d2c-sandbox-" in cwd
    assert not os.path.exists(cwd)  # removed afterwards
