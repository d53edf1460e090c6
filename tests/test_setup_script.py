"""scripts/setup.sh stops with one line naming the space it needs before pip fills a disk (a fake `df` on PATH)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run_setup(tmp_path: Path, free_mb: int, venv: bool = False) -> subprocess.CompletedProcess:
    """setup.sh copied into an empty project dir, with `df` reporting `free_mb` free on one filesystem and
    `python3.11` a stub that records that it was called (so nothing gets installed whichever way the check goes)."""
    repo, bin_dir = tmp_path / "repo", tmp_path / "bin"
    (repo / "scripts").mkdir(parents=True)
    bin_dir.mkdir()
    shutil.copy(REPO / "scripts" / "setup.sh", repo / "scripts" / "setup.sh")
    if venv:
        (repo / ".venv").mkdir()
    (bin_dir / "df").write_text("#!/bin/sh\necho 'Filesystem 1M-blocks Used Available Capacity Mounted on'\n"
                                f"echo '/dev/fake 100000 0 {free_mb} 0% /'\n")
    (bin_dir / "python3.11").write_text(f"#!/bin/sh\ntouch {tmp_path}/python-called\nexit 3\n")
    for tool in ("df", "python3.11"):
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(tmp_path)}
    return subprocess.run(["bash", str(repo / "scripts" / "setup.sh")], env=env, capture_output=True, text=True)


def test_setup_stops_before_pip_when_the_disk_is_nearly_full(tmp_path):
    done = _run_setup(tmp_path, free_mb=287)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "has 287 MB free; set-up needs about 3100 MB" in lines[0]
    assert not (tmp_path / "python-called").exists() and not (tmp_path / "repo" / ".venv").exists()


@pytest.mark.parametrize("free_mb,venv", [(3100, False), (10, True)])
def test_setup_goes_on_with_enough_space_or_an_existing_venv(tmp_path, free_mb, venv):
    """Enough space, or a re-run over an existing .venv (adds almost nothing): the check lets it through to Python."""
    done = _run_setup(tmp_path, free_mb=free_mb, venv=venv)
    assert "MB free" not in done.stderr
    assert done.returncode == 3  # the stub python3.11 (making .venv) exits 3: nothing was installed
    assert (tmp_path / "python-called").exists()
