"""The sandbox contains hostile programs: each test runs a real program in a real subprocess.

Hostile programs reach for `posix` / `ctypes` directly on purpose: the in-process guard replaces `os.fork`,
`os.kill`, `socket.socket`..., and the OS layers must hold even when that guard is bypassed.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prunekit.errors import ConfigError
from prunekit.evaluation.benchmarks.sandbox import isolation, run_python

ISO = isolation()
needs_namespaces = pytest.mark.skipif(not ISO["namespaces"], reason="no mount/net/pid namespaces here "
                                      "(needs root and util-linux unshare)")
needs_root = pytest.mark.skipif(not ISO["drop_privileges"], reason="privilege drop needs root")


def _uid_processes(uid: int) -> list[int]:
    """Pids of live processes whose real uid is `uid`."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            line = next(x for x in status.splitlines() if x.startswith("Uid:"))
            if int(line.split()[1]) == uid:
                pids.append(int(entry))
    return pids


def test_correct_program_passes():
    r = run_python("import math, hashlib\nassert math.gcd(12, 18) == 6\n")
    assert r.status == "passed", r.stderr_tail
    assert r.returncode == 0


@pytest.mark.parametrize("ending", ["import sys\nsys.exit(0)", "import sys\nsys.exit()", "raise SystemExit",
                                    "exit()", "quit()", "import os\nos._exit(0)", "import posix\nposix._exit(0)"])
def test_a_program_that_exits_before_its_end_fails(ending):
    """Exit status 0 is not a pass: only a program that reaches its last line passes (the official harness counts
    SystemExit as a failure), so the assertion after the exit can never be skipped into a pass."""
    r = run_python(f"{ending}\nassert False, 'never reached'\n")
    assert r.status == "failed", (r.status, r.returncode, r.stderr_tail)


def test_a_program_that_catches_its_own_system_exit_runs_on_and_passes():
    assert run_python("import sys\ntry:\n    sys.exit(0)\nexcept SystemExit:\n    pass\nx = 1\n").status == "passed"


def test_wrong_assertion_fails():
    r = run_python("assert sorted([3, 1, 2]) == [3, 2, 1]\n")
    assert r.status == "failed"
    assert "AssertionError" in r.stderr_tail


def test_infinite_loop_is_killed_by_timeout():
    t0 = time.monotonic()
    r = run_python("while True:\n    pass\n", timeout_s=1.0)
    assert r.status == "timeout"
    assert time.monotonic() - t0 < 3.0


def test_allocating_4gb_fails_by_memory_limit():
    r = run_python("b = bytearray(4 * 1024 ** 3)\nb[-1] = 1\n", memory_mb=512)
    assert r.status == "failed"
    assert "MemoryError" in r.stderr_tail


def test_writing_100mb_file_fails_by_file_size_limit():
    r = run_python("with open('big.bin', 'wb') as f:\n    f.write(b'x' * (100 * 2 ** 20))\n", max_file_mb=10)
    assert r.status == "failed"
    assert "File too large" in r.stderr_tail or r.returncode in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ)


@needs_root
def test_process_count_is_bounded():
    prog = (
        "import posix, sys, time\n"
        "n = 0\n"
        "for _ in range(100):\n"
        "    try:\n"
        "        pid = posix.fork()\n"
        "    except OSError:\n"
        "        continue\n"
        "    if pid == 0:\n"
        "        time.sleep(5)\n"
        "        posix._exit(0)\n"
        "    n += 1\n"
        "sys.stderr.write(f'forked={n}\\n')\n"
    )
    r = run_python(prog, max_procs=8, timeout_s=2.0)
    forked = int(r.stderr_tail.split("forked=")[1].split()[0])
    assert 0 < forked < 8


@needs_root
def test_fork_bomb_is_contained_and_cleaned_up():
    prog = (
        "import posix\n"
        "while True:\n"
        "    try:\n"
        "        posix.fork()\n"
        "    except OSError:\n"
        "        pass\n"
    )
    t0 = time.monotonic()
    r = run_python(prog, timeout_s=1.5, max_procs=16)
    assert r.status == "timeout"
    assert time.monotonic() - t0 < 5.0
    deadline = time.monotonic() + 2.0
    while _uid_processes(r.uid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _uid_processes(r.uid) == []


def test_plain_socket_to_localhost_fails():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.2)
        port = server.getsockname()[1]
        prog = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        r = run_python(prog)
        assert r.status == "failed"
        with pytest.raises(socket.timeout):
            server.accept()


@needs_namespaces
def test_raw_socket_syscall_finds_no_network():
    """Bypassing the socket prelude with libc: the empty network namespace still refuses."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.2)
        port = server.getsockname()[1]
        prog = (
            "import ctypes, struct, sys\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "fd = libc.socket(2, 1, 0)\n"
            "assert fd >= 0, 'socket() itself failed'\n"
            f"addr = struct.pack('!HH4s8x', 2, {port}, bytes([127, 0, 0, 1]))\n"
            "addr = struct.pack('=H', 2) + addr[2:]\n"
            "rc = libc.connect(fd, addr, len(addr))\n"
            "sys.exit(0 if rc == 0 else 3)\n"
        )
        r = run_python(prog)
        assert r.status == "failed" and r.returncode == 3, r.stderr_tail
        with pytest.raises(socket.timeout):
            server.accept()


def test_child_does_not_see_parent_secret(monkeypatch):
    monkeypatch.setenv("PRUNEKIT_TEST_SECRET", "hunter2")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    prog = (
        "import os\n"
        "assert 'PRUNEKIT_TEST_SECRET' not in os.environ\n"
        "assert 'HTTPS_PROXY' not in os.environ\n"
        "assert 'hunter2' not in repr(dict(os.environ))\n"
    )
    assert run_python(prog).status == "passed"
    # The same program must notice a leak: with the secret visible it fails (the check can fail).
    leak = run_python("import os\nos.environ['PRUNEKIT_TEST_SECRET'] = 'x'\n" + prog)
    assert leak.status == "failed"


def test_workdir_is_throwaway_and_parent_cwd_untouched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prog = (
        "import posix, sys\n"
        "open('marker.txt', 'w').write('x')\n"
        "sys.stderr.write('cwd=' + posix.getcwd() + '\\n')\n"
    )
    r = run_python(prog)
    assert r.status == "passed", r.stderr_tail
    assert f"cwd={r.workdir}" in r.stderr_tail
    assert not os.path.exists(r.workdir)
    assert not (tmp_path / "marker.txt").exists()
    assert list(tmp_path.iterdir()) == []


@needs_root
def test_writing_outside_the_workdir_changes_nothing(tmp_path):
    target = tmp_path / "escaped.txt"
    prog = (
        "import sys\n"
        "ok = []\n"
        f"for p in [{str(target)!r}, '/work/escaped.txt', '/tmp/escaped-prunekit.txt']:\n"
        "    try:\n"
        "        open(p, 'w').write('x')\n"
        "        ok.append(p)\n"
        "    except OSError:\n"
        "        pass\n"
        "sys.stderr.write(f'written={ok}\\n')\n"
    )
    r = run_python(prog)
    assert r.status == "passed", r.stderr_tail
    assert not target.exists()
    assert not Path("/work/escaped.txt").exists()
    if ISO["namespaces"]:
        assert not Path("/tmp/escaped-prunekit.txt").exists()


@needs_root
def test_cannot_kill_processes_outside():
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        prog = (
            "import posix, signal\n"
            f"for pid in ({victim.pid}, posix.getppid(), 1):\n"
            "    try:\n"
            "        posix.kill(pid, signal.SIGKILL)\n"
            "    except OSError:\n"
            "        pass\n"
        )
        run_python(prog)
        time.sleep(0.1)
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_bad_option_is_a_clear_error():
    with pytest.raises(ConfigError, match="timeout_s"):
        run_python("pass", timeout_s=0)
    with pytest.raises(ConfigError, match="memory_mb"):
        run_python("pass", memory_mb=16)
