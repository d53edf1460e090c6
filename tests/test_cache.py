"""ArtifactCache: a usable entry is read, a missing one built and stored, a damaged one moved aside and rebuilt, a
failed write is a warning, and two processes that need the same entry build it once."""

import errno
import json
import logging
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from prunekit.cache import ArtifactCache, Damaged, digest
from prunekit.checkpoint import atomic_write_json


class Numbers(ArtifactCache):
    """A JSON list of numbers of an expected length."""

    kind = "numbers cache"
    suffix = ".json"
    again = "counting again"
    hit_message = "numbers from %s"
    saved_message = "numbers saved to %s"
    log = logging.getLogger("tests.numbers")

    def read(self, path: Path, expected):
        data = json.loads(path.read_text())
        if data["format"] != self.version:
            raise Damaged(f"format {data['format']}, expected {self.version}")
        if expected is not None and len(data["values"]) != expected:
            raise Damaged(f"{len(data['values'])} values, expected {expected}")
        return data["values"]

    def write(self, path: Path, values, expected):
        atomic_write_json(path, {"format": self.version, "values": values})


def _counting(calls: list, values):
    def build():
        calls.append(1)
        return values
    return build


def test_digest_is_sorted_json_sha256():
    import hashlib

    payload = {"b": [1, 2], "a": Path("/x")}
    full = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    assert digest(payload) == full[:20] and digest(payload, None) == full
    assert digest({"a": Path("/x"), "b": [1, 2]}) == digest(payload)  # key order does not matter


def test_miss_builds_and_stores_then_hit_reads_without_building(tmp_path, caplog):
    cache, calls = Numbers(tmp_path / "n"), []
    with caplog.at_level(logging.INFO, logger="tests.numbers"):
        assert cache.get("k", _counting(calls, [1, 2, 3]), 3) == ([1, 2, 3], False)
        assert json.loads((tmp_path / "n" / "k.json").read_text())["values"] == [1, 2, 3]
        assert cache.get("k", _counting(calls, [9, 9, 9]), 3) == ([1, 2, 3], True)
    assert calls == [1]
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [f"numbers saved to {cache.path('k')}", f"numbers from {cache.path('k')}"]
    assert cache.load("absent") is None


@pytest.mark.parametrize("damage", ["garbage", "empty", "mismatch", "old format"])
def test_damaged_entry_is_moved_aside_and_rebuilt(damage, tmp_path, caplog):
    cache, calls = Numbers(tmp_path), []
    path = cache.path("k")
    contents = {"garbage": "\x00garbage", "empty": "", "mismatch": '{"format": 1, "values": [1]}',
                "old format": '{"format": 0, "values": [1, 2]}'}
    path.write_text(contents[damage])
    with caplog.at_level(logging.WARNING, logger="tests.numbers"):
        value, cached = cache.get("k", _counting(calls, [4, 5]), 2)
    assert (value, cached, calls) == ([4, 5], False, [1])
    (aside,) = tmp_path.glob("k.json.bad-*")
    assert aside.read_text() == contents[damage]  # kept for inspection, as it was
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"numbers cache {path} is damaged (") and warning.endswith(f"moved to {aside}, "
                                                                                        "counting again")
    assert cache.get("k", _counting(calls, [0, 0]), 2) == ([4, 5], True)  # the rebuilt entry is used


class FullDisk(Numbers):
    def write(self, path: Path, values, expected):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_a_failed_write_warns_and_returns_the_built_value(tmp_path, caplog):
    cache = FullDisk(tmp_path)
    with caplog.at_level(logging.WARNING, logger="tests.numbers"):
        assert cache.get("k", lambda: [7]) == ([7], False)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"could not write the numbers cache {cache.path('k')} ([Errno 28] ")
    assert warning.endswith("; continuing without it")
    assert not cache.path("k").exists() and cache.save("k", [7]) is False


def test_a_build_that_fails_propagates_and_leaves_no_entry(tmp_path):
    cache = Numbers(tmp_path)

    def broken():
        raise RuntimeError("no model")

    with pytest.raises(RuntimeError, match="no model"):
        cache.get("k", broken)
    assert not cache.path("k").exists()


def _build_in_a_process(root: str, start, results) -> None:
    """Spawned twice at once: each asks for the same entry; the build is slow and leaves a mark per call."""
    marks = Path(root) / "builds"

    def build():
        with open(marks, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(2)  # long enough that the other process arrives while this one holds the lock
        return [os.getpid()]

    start.wait(timeout=60)
    results.put(Numbers(Path(root) / "cache").get("k", build))


def test_two_processes_needing_one_entry_build_it_once(tmp_path):
    spawn = multiprocessing.get_context("spawn")
    start, results = spawn.Barrier(2), spawn.Queue()
    procs = [spawn.Process(target=_build_in_a_process, args=(str(tmp_path), start, results)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert (tmp_path / "builds").read_text().count("\n") == 1  # one build
    assert sorted(cached for _, cached in got) == [False, True]  # the other waited and read it
    assert got[0][0] == got[1][0]  # the same value for both
