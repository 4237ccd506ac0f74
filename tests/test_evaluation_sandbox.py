"""The code sandbox: hostile programs end as failures, the caller's files and processes stay as they were."""

import os
import socket
import subprocess
import tempfile
import time

import pytest

from d2cache_jax.evaluation import sandbox

LIMITS = sandbox.SandboxLimits(timeout_s=5.0, memory_mb=512, max_processes=8)
PROBLEM = sandbox.isolation_problem()
pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=f"no OS isolation here: {PROBLEM}")


@pytest.fixture(params=["host", "userns"])
def mode(request, monkeypatch):
    """Both ways of isolating: as root (fresh uid, no user namespace) and in a user namespace (non-root)."""
    if request.param == "host" and os.geteuid() != 0:
        pytest.skip("the root path needs a root evaluator")
    monkeypatch.setattr(sandbox, "_as_root", lambda: request.param == "host")
    return request.param


@pytest.fixture(autouse=True)
def private_tempdir(tmp_path, monkeypatch):
    """Sandbox folders go to a folder of this test's own, so leftovers can be counted."""
    folder = tmp_path / "sandbox-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    assert os.listdir(folder) == []  # every run removed its folders


def run(code, limits=LIMITS):
    return sandbox.run_program(code, limits)


@pytest.fixture
def victim(tmp_path):
    """A file of the caller's that no program may change."""
    path = tmp_path / "victim" / "precious.txt"
    path.parent.mkdir()
    path.write_text("original")
    return path


def processes_with(text):
    """Pids of this machine's processes whose command line contains `text`."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


def test_good_program_passes_and_may_use_its_own_tmp(mode):
    result = run("import math\nopen('/tmp/scratch.txt', 'w').write('x')\n"
                 "assert open('/tmp/scratch.txt').read() == 'x'\nprint('hello', math.sqrt(4))\n")
    assert result.passed and result.status == "passed" and result.stdout.strip() == "hello 2.0"


def test_failing_assert_fails():
    result = run("assert 1 + 1 == 3\n")
    assert not result.passed and result.status == "failed" and "AssertionError" in result.stderr


def test_infinite_loop_is_killed_at_the_time_limit():
    limits = sandbox.SandboxLimits(timeout_s=2.0)
    result = run("while True:\n    pass\n", limits)
    assert result.status == "timeout" and not result.passed and result.wall_s < limits.timeout_s + 2


def test_8gb_allocation_fails():
    result = run("x = bytearray(8 << 30)\nprint('allocated')\n")
    assert not result.passed and "MemoryError" in result.stderr and "allocated" not in result.stdout


def test_no_network(mode):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    result = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')\n")
    with pytest.raises(socket.timeout):
        listener.accept()  # nobody came
    listener.close()
    assert not result.passed and "connected" not in result.stdout


def test_runs_unprivileged_without_capabilities(mode):
    result = run("import os\nprint(os.getuid())\n"
                 "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n")
    uid, caps = result.stdout.split()
    assert result.passed and int(caps, 16) == 0
    if mode == "host":
        assert int(uid) >= 1_000_000  # a fresh uid, not root


WRITES_OUTSIDE = {
    "open": "open({path!r}, 'w').write('pwned')",
    "remove": "os.remove({path!r})",
    "rename": "os.rename({path!r}, {path!r} + '.moved')",
    "os.open": "os.close(os.open({path!r}, os.O_WRONLY | os.O_TRUNC))",
    "rmtree": "shutil.rmtree({folder!r})",
    "mkfifo": "os.mkfifo({folder!r} + '/fifo')",
    "mknod": "os.mknod({folder!r} + '/node')",
    "usr": "open('/usr/d2c-pwned', 'w')",
    "etc": "open('/etc/d2c-pwned', 'w')",
    "root": "open('/d2c-pwned', 'w')",
    "mkfifo-usr": "os.mkfifo('/usr/d2c-pwned')",
    "mknod-etc": "os.mknod('/etc/d2c-pwned')",
    "abspath-swap": "import posixpath; posixpath.abspath = lambda p: '/tmp/x'; open({path!r}, 'w').write('pwned')",
    "gc-flip": "import gc; [setattr(o, 'x', 1) for o in gc.get_objects() if type(o).__name__ == 'cell']; "
               "open({path!r}, 'w').write('pwned')",
    "shell": "os.system('echo pwned > {path}; echo pwned > /usr/d2c-pwned')",
    "subprocess": "import subprocess; subprocess.run(['sh', '-c', 'echo pwned > {path}'])",
    "fork": "pid = os.fork()\nif pid == 0:\n    open({path!r}, 'w').write('pwned')\n    os._exit(0)\n"
            "os.waitpid(pid, 0)",
    "remount": "os.system('mount -o remount,rw / && touch /d2c-pwned')",
}


@pytest.mark.parametrize("attack", sorted(WRITES_OUTSIDE))
def test_nothing_outside_its_tmp_changes(victim, attack, mode):
    code = "import os, shutil\n" + WRITES_OUTSIDE[attack].format(path=str(victim), folder=str(victim.parent))
    run(code + "\n")
    assert victim.read_text() == "original" and os.listdir(victim.parent) == ["precious.txt"]
    for path in ("/usr/d2c-pwned", "/etc/d2c-pwned", "/d2c-pwned"):
        assert not os.path.exists(path)


def test_device_node_is_refused_even_in_its_own_tmp(mode):
    result = run("import os, stat\ntry:\n    os.mknod('/tmp/mem', stat.S_IFCHR | 0o666, os.makedev(1, 1))\n"
                 "except PermissionError:\n    print('refused')\n")
    assert result.stdout.strip() == "refused"


@pytest.mark.parametrize("how", [
    "import subprocess\nsubprocess.Popen(['sleep', '{tag}'], start_new_session=True)",  # fork_exec(..., setsid)
    "import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        os.execv('/bin/sleep', "
    "['sleep', '{tag}'])\n    os._exit(0)",
])
def test_no_process_outlives_the_run(how, mode):
    tag = f"77.{os.getpid()}{time.monotonic_ns() % 100000}"
    result = run(how.format(tag=tag) + "\nimport time\ntime.sleep(0.3)\nprint('started')\n")
    assert "started" in result.stdout
    assert processes_with(tag) == []


def test_no_process_outlives_a_timeout(mode):
    tag = f"78.{os.getpid()}{time.monotonic_ns() % 100000}"
    result = run(f"import subprocess\nsubprocess.Popen(['sleep', '{tag}'], start_new_session=True)\n"
                 "while True:\n    pass\n", sandbox.SandboxLimits(timeout_s=2.0))
    assert result.status == "timeout" and processes_with(tag) == []


def test_process_count_is_limited(mode):
    if mode == "userns" and os.geteuid() == 0:
        pytest.skip("forced here, the user namespace maps to root, whom the kernel never limits")
    code = ("import os, time\nn = 0\ntry:\n    while n < 200:\n        if os.fork() == 0:\n            time.sleep(30)\n"
            "            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nprint(n)\n")
    result = run(code)
    assert 0 < int(result.stdout.strip()) < LIMITS.max_processes


def test_cannot_signal_the_evaluator_or_other_processes(mode):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        code = (f"import os, signal\nfor pid in ({sleeper.pid}, {os.getpid()}, os.getppid(), -1):\n"
                "    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError as e:\n        print(e)\n"
                f"try:\n    fd = os.pidfd_open({sleeper.pid})\n    signal.pidfd_send_signal(fd, signal.SIGKILL)\n"
                "except OSError as e:\n    print(e)\n")
        run(code)
        time.sleep(0.2)
        assert sleeper.poll() is None  # still running; and so is this test process
    finally:
        sleeper.kill()
        sleeper.wait()


def test_huge_output_is_cut():
    result = run("import sys\nfor _ in range(100):\n    sys.stdout.write('x' * (1 << 20))\n")
    assert not result.passed and len(result.stdout) <= 64 * 1024


def test_environment_is_clean_and_cwd_is_its_tmp():
    result = run("import os\nprint(sorted(os.environ))\nprint(os.getcwd())\n")
    names, cwd = result.stdout.strip().split("\n")
    assert result.passed and cwd == "/tmp" and "D2C" not in names


def test_main_guard_does_not_run():
    assert run("if __name__ == '__main__':\n    raise ValueError\n").passed


# The verdict: `check_solution` runs the tests in their own sandbox.

SQUARE_TESTS = sandbox.ProblemTests(tests="def check(candidate):\n    assert candidate(3) == 9\n"
                                          "    assert abs(candidate(0.5) - 0.25) < 1e-9\n\ncheck(square)\n")


def check(solution, tests=SQUARE_TESTS):
    return sandbox.check_solution(solution, tests, LIMITS)


def test_correct_solution_passes_and_wrong_one_fails(mode):
    assert check("def square(x):\n    return x * x\n").status == "passed"
    wrong = check("def square(x):\n    return x + x\n")
    assert wrong.status == "failed" and "AssertionError" in wrong.stderr


FORGERIES = {
    "exit-early": "import sys\nsys.exit(0)\n",
    "os-exit": "import os\nos._exit(0)\n",
    "always-equal": "class Yes(float):\n    def __eq__(self, other):\n        return True\n    def __sub__(self, o):\n"
                    "        return 0.0\ndef square(x):\n    return Yes(1.0)\n",
    "custom-object": "class Yes:\n    __eq__ = lambda s, o: True\n    __sub__ = lambda s, o: 0\n"
                     "def square(x):\n    return Yes()\n",
    "shadow-abs": "def abs(x):\n    return 0\ndef square(x):\n    return 9\n",
    "fake-marker": "import os, sys\nprint('pass')\nfor fd in range(64):\n    try:\n        os.write(fd, b'pass\\n')\n"
                   "    except OSError:\n        pass\nfor p in os.listdir('/proc'):\n    try:\n"
                   "        print(open(f'/proc/{p}/environ').read())\n    except OSError:\n        pass\n"
                   "def square(x):\n    return 9\n",
    "kill-all": "import os, signal\nos.kill(-1, signal.SIGKILL)\ndef square(x):\n    return 9\n",
    "define-check": "def check(candidate):\n    pass\ndef square(x):\n    return 9\n",
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_a_wrong_solution_cannot_forge_a_pass(name):
    result = check(FORGERIES[name])
    assert result.status == "failed" and not result.passed


def test_builtin_exceptions_reach_the_tests():
    tests = sandbox.ProblemTests(tests="try:\n    f(-1)\nexcept ValueError:\n    pass\n"
                                       "else:\n    raise AssertionError\n")
    assert check("def f(x):\n    raise ValueError('negative')\n", tests).passed
    assert not check("def f(x):\n    return 1\n", tests).passed


def test_values_keep_their_types():
    tests = sandbox.ProblemTests(tests="r = f()\nassert r == ((1, 2), [3.5], {'a': {4}}, b'x', None, True)\n"
                                       "assert type(r[0]) is tuple and type(r[1]) is list\n")
    assert check("def f():\n    return ((1, 2), [3.5], {'a': {4}}, b'x', None, True)\n", tests).passed
    assert not check("def f():\n    return ([1, 2], [3.5], {'a': {4}}, b'x', None, True)\n", tests).passed


def test_solution_timeout_is_a_timeout():
    result = sandbox.check_solution("def square(x):\n    while True:\n        pass\n", SQUARE_TESTS,
                                    sandbox.SandboxLimits(timeout_s=2.0))
    assert result.status == "timeout" and not result.passed
