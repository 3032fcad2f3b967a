"""A decode that is killed resumes where it stopped and publishes the bytes an uninterrupted one would; torn
journal records and damaged rows are not trusted; shards decoded by separate processes make the same
cache as one process. Real PyAV decoding of small generated videos throughout: the only thing injected
is a stop (a hang, or an exception) at a chosen video, and a counter of the videos decoded."""

from __future__ import annotations

import gc
import inspect
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from tsgf_lightning.data import decoding
from tsgf_lightning.data.cache import cache_file, decode_shard, load_or_decode
from tsgf_lightning.data.decode import decode_clips
from tsgf_lightning.data.integrity import remove_stale_temps
from tsgf_lightning.data.partial import (
    Journal,
    compact_file,
    encode_record,
    journals,
    no_writers,
    partial_files,
    read_journal,
    read_journals,
    rows_file,
)
from tsgf_lightning.data.sources import VideoItem

from .test_cache import SOURCE, SPEC, spoil, stored

#: A child that decodes one shard of the part, hanging forever on the videos listed in `hang`.
CHILD = """
import json, sys, time
from tsgf_lightning.data import cache, decoding
from tsgf_lightning.data.sources import VideoItem
args = json.loads(sys.argv[1])
real, hang = decoding.decode_clips, set(args["hang"])
def decode_or_hang(path, *rest, **kwargs):
    if path in hang:
        time.sleep(3600)
    time.sleep(args["slow"])
    return real(path, *rest, **kwargs)
decoding.decode_clips = decode_or_hang
items = [VideoItem(*v) for v in args["items"]]
spec = cache.ClipSpec(4, (12, 16))
if args["load"]:
    print(cache.load_or_decode(args["cache"], args["source"], "fit", items, spec, args["workers"], 0.2).clips.sum())
else:
    print(cache.decode_shard(args["cache"], args["source"], "fit", items, spec, args["shard"], args["num_shards"],
                             args["workers"], max_bad_fraction=0.2))
"""


@pytest.fixture
def dozen(tmp_path, write_video) -> list[VideoItem]:
    """Twelve 7-frame 20x24 FFV1 videos of random content, two classes, one group each; the third unreadable."""
    folder = tmp_path / "dozen"
    folder.mkdir()
    items = []
    for i in range(12):
        frames = torch.randint(0, 256, (7, 20, 24, 3), generator=torch.Generator().manual_seed(i), dtype=torch.uint8)
        items.append(VideoItem(str(write_video(folder / f"v{i:02d}.mkv", frames)), label=i % 2, group=f"g{i}"))
    spoil(items[2].path)
    return items


@pytest.fixture
def counted(monkeypatch) -> list[str]:
    """The videos decoded in this process (the real decoder runs)."""
    seen: list[str] = []

    def counting(path, *args, **kwargs):
        seen.append(path)
        return decode_clips(path, *args, **kwargs)

    monkeypatch.setattr(decoding, "decode_clips", counting)
    return seen


def child(cache: Path, items, env, shard=0, num_shards=1, hang=(), workers=1, slow=0.0,
          load=False) -> subprocess.Popen:
    """A process decoding a shard (``load``: the whole part, as a stage's DataModule does), ``slow`` s per video."""
    args = {"cache": str(cache), "source": SOURCE, "items": [[v.path, v.label, v.group] for v in items],
            "shard": shard, "num_shards": num_shards, "hang": list(hang), "workers": workers, "slow": slow,
            "load": load}
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def reference(tmp_path, items) -> Path:
    """The cache of one uninterrupted decode in a folder of its own."""
    folder = tmp_path / "reference"
    with pytest.warns(UserWarning, match="v02.mkv"):
        load_or_decode(str(folder), SOURCE, "fit", items, SPEC, workers=1, max_bad_fraction=0.2)
    return stored(cache_file(str(folder), SOURCE, "fit", items, SPEC))


def same_cache(folder: Path, items, want: Path) -> None:
    got = stored(cache_file(str(folder), SOURCE, "fit", items, SPEC))
    assert got.name == want.name and got.read_bytes() == want.read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == [got.name]  # nothing of the partial is left


def wait_for_records(key: Path, rows: int, count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while len(read_journals(key, rows)) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"no {count} journal records after {timeout} s"
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------ resume

def test_a_killed_decode_resumes_with_the_missing_videos_only_and_writes_the_same_bytes(
        tmp_path, dozen, subprocess_env, counted):
    folder = tmp_path / "cache"
    key = cache_file(str(folder), SOURCE, "fit", dozen, SPEC)
    # Two workers, four videos a task: 0-3 and 4-7 finish, the worker given 8-11 hangs on video 8.
    proc = child(folder, dozen, subprocess_env, hang=[v.path for v in dozen[8:]], workers=2)
    try:
        wait_for_records(key, len(dozen), 8, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the decoder and its workers, mid-decode
        proc.communicate()
    records = read_journals(key, len(dozen))
    assert sorted(records) == list(range(8)) and records[2][1] is not None and "v02.mkv" in records[2][1]
    assert not any(p.name.endswith(".pt") for p in folder.iterdir())  # no cache was published
    assert remove_stale_temps(folder) == [] and rows_file(key).exists()  # a killed decode is resumable, not garbage

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        resumed = load_or_decode(str(folder), SOURCE, "fit", dozen, SPEC, workers=1, max_bad_fraction=0.2)
    said = [str(w.message) for w in record]
    assert any("skipping unreadable video" in m and "v02.mkv" in m for m in said), said
    assert any("skipped 1 of 12 unreadable videos" in m for m in said), said  # as before: warned, then reported
    assert counted == [v.path for v in dozen[8:]]  # only the videos the killed run had not finished
    same_cache(folder, dozen, reference(tmp_path, dozen))
    kept = [v for v in dozen if v is not dozen[2]]
    assert resumed.paths == [v.path for v in kept] and resumed.skipped == [dozen[2].path]
    for i, item in enumerate(kept):  # compacted over the unreadable row: the clips still line up
        assert torch.equal(resumed.clips[i], decode_clips(item.path, 4, (12, 16)))


def test_a_torn_journal_record_and_a_damaged_row_are_decoded_again(tmp_path, dozen, counted, monkeypatch):
    folder = tmp_path / "cache"
    key = cache_file(str(folder), SOURCE, "fit", dozen, SPEC)
    real = decoding.decode_clips

    def stop_at_seven(path, *args, **kwargs):
        if path == dozen[7].path:
            raise KeyboardInterrupt  # what Ctrl-C in the middle of a decode raises
        return real(path, *args, **kwargs)

    monkeypatch.setattr(decoding, "decode_clips", stop_at_seven)
    with pytest.raises(KeyboardInterrupt):
        load_or_decode(str(folder), SOURCE, "fit", dozen, SPEC, workers=1, max_bad_fraction=0.2)
    [journal] = journals(key)
    assert sorted(read_journals(key, len(dozen))) == list(range(7))
    size = journal.stat().st_size
    os.truncate(journal, size - 3)  # the last record (video 6) torn, as by a kill inside the write
    assert sorted(read_journal(journal, len(dozen))[0]) == list(range(6))
    row_bytes = rows_file(key).stat().st_size // len(dozen)
    with open(rows_file(key), "r+b") as f:  # a byte of video 4's row lost (a power cut without fsync)
        f.seek(4 * row_bytes + 10)
        old = f.read(1)
        f.seek(4 * row_bytes + 10)
        f.write(bytes([old[0] ^ 0xFF]))

    monkeypatch.setattr(decoding, "decode_clips", real)  # the counting decoder again
    counted.clear()
    with pytest.warns(UserWarning, match="v02.mkv"):
        load_or_decode(str(folder), SOURCE, "fit", dozen, SPEC, workers=1, max_bad_fraction=0.2)
    assert counted == [dozen[4].path, *[v.path for v in dozen[6:]]]
    same_cache(folder, dozen, reference(tmp_path, dozen))


def test_journal_records_are_read_up_to_the_first_untrusted_one(tmp_path):
    key = tmp_path / "part.pt"
    journal = Journal(key, 0, 1, rows=10)
    for i, reason in ((0, None), (1, "v1.mkv: no video stream"), (2, None), (3, None)):
        journal.add(i, 1000 + i, reason)
    journal.close()
    data = bytearray(journal.path.read_bytes())
    assert read_journal(journal.path, 10) == ({0: (1000, None), 1: (1001, "v1.mkv: no video stream"),
                                               2: (1002, None), 3: (1003, None)}, len(data))
    third = len(encode_record(0, 0, None)) + len(encode_record(1, 0, "v1.mkv: no video stream"))
    data[third + 5] ^= 1  # a bit of the third record
    journal.path.write_bytes(bytes(data))
    assert sorted(read_journal(journal.path, 10)[0]) == [0, 1]  # neither it nor what follows is trusted
    assert read_journal(journal.path, rows=1)[0] == {0: (1000, None)}  # a row out of range ends it too
    again = Journal(key, 0, 1, rows=10)  # the same pid again: the torn tail is cut before appending
    again.add(5, 1005, None)
    again.close()
    assert sorted(read_journal(journal.path, 10)[0]) == [0, 1, 5]


def test_a_killed_compaction_resumes_without_decoding(tmp_path, dozen, monkeypatch, counted):
    from tsgf_lightning.data import partial

    folder = tmp_path / "cache"
    key = cache_file(str(folder), SOURCE, "fit", dozen, SPEC)
    real_pwrite, writes = os.pwrite, []

    def stop_on_third_move(fd, data, offset):
        if compact_file(key).exists():
            writes.append(offset)
            if len(writes) == 3:
                real_pwrite(fd, bytes(data)[:len(data) // 2], offset)  # half a row moved, then killed
                raise KeyboardInterrupt
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(partial.os, "pwrite", stop_on_third_move)
    with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning, match="v02.mkv"):
        load_or_decode(str(folder), SOURCE, "fit", dozen, SPEC, workers=1, max_bad_fraction=0.2)
    monkeypatch.setattr(partial.os, "pwrite", real_pwrite)
    assert partial.compacted_through(key) == 4  # rows 2 and 3 moved, row 4 in flight
    counted.clear()
    with pytest.warns(UserWarning, match="v02.mkv"):
        load_or_decode(str(folder), SOURCE, "fit", dozen, SPEC, workers=1, max_bad_fraction=0.2)
    assert counted == []
    same_cache(folder, dozen, reference(tmp_path, dozen))


# ------------------------------------------------------------------------------------------ shards

def test_two_shard_processes_make_the_cache_one_process_makes(tmp_path, dozen, subprocess_env):
    folder = tmp_path / "cache"
    procs = [child(folder, dozen, subprocess_env, shard=i, num_shards=2) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    published = [out.strip().splitlines()[-1] for out, _ in outs]
    assert {p for p in published if p != "None"} == {str(stored(cache_file(str(folder), SOURCE, "fit", dozen, SPEC)))}
    same_cache(folder, dozen, reference(tmp_path, dozen))


@pytest.mark.parametrize("workers", [1, 2])
def test_two_processes_decoding_one_part_at_once_both_get_the_cache_one_process_makes(tmp_path, dozen,
                                                                                       subprocess_env, workers):
    """Pipeline stages started together decode the same part. The quick one finishes first and must not publish
    (compacting over the unreadable video's row, then removing the rows file) while the slow one still writes."""
    folder = tmp_path / "cache"
    quick = child(folder, dozen, subprocess_env, workers=workers, load=True)
    slow = child(folder, dozen, subprocess_env, workers=workers, slow=0.4, load=True)
    outs = [p.communicate(timeout=300) for p in (quick, slow)]
    assert [p.returncode for p in (quick, slow)] == [0, 0], outs
    want = reference(tmp_path, dozen)
    total = torch.load(want, weights_only=True)["clips"].sum()
    assert [out.strip().splitlines()[-1] for out, _ in outs] == [f"tensor({total})"] * 2
    same_cache(folder, dozen, want)


def test_a_killed_decoder_does_not_leave_its_part_locked_through_the_workers_it_forked(tmp_path, subprocess_env):
    """Decode workers are forked while the writers lock is held; a SIGKILL of the decoding process alone (a
    pipeline stopping its stage, the OOM killer) leaves them alive. They must not keep the part locked."""
    key = tmp_path / "part.pt"
    code = f"""
import os, signal, sys, time
from pathlib import Path
from tsgf_lightning.data.partial import writing
with writing(Path({str(key)!r})):
    child = os.fork()
    if child == 0:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1), os.dup2(null, 2)  # let the test read the parent's output without waiting for this one
        time.sleep(120)
        os._exit(0)
    print(child, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code], env=subprocess_env, capture_output=True, text=True,
                          timeout=120)
    orphan = int(proc.stdout.split()[0])
    try:
        assert proc.returncode == -signal.SIGKILL and os.kill(orphan, 0) is None  # the forked worker lives on
        with no_writers(key) as alone:
            assert alone
    finally:
        os.kill(orphan, signal.SIGKILL)


def test_a_load_finishes_the_shards_nobody_decoded(tmp_path, dozen, counted):
    folder = tmp_path / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a shard that does not publish warns about nothing
        assert decode_shard(str(folder), SOURCE, "fit", dozen, SPEC, shard=0, num_shards=3, workers=1,
                            max_bad_fraction=0.2) is None  # rows 4-11 missing: not published
    assert counted == [v.path for v in dozen[:4]]
    assert {p.name.split(".journal.")[-1].split(".")[0] for p in journals(
        cache_file(str(folder), SOURCE, "fit", dozen, SPEC))} == {"0of3"}
    counted.clear()
    with pytest.warns(UserWarning, match="v02.mkv"):
        load_or_decode(str(folder), SOURCE, "fit", dozen, SPEC, workers=1, max_bad_fraction=0.2)
    assert counted == [v.path for v in dozen[4:]]
    same_cache(folder, dozen, reference(tmp_path, dozen))
    assert partial_files(cache_file(str(folder), SOURCE, "fit", dozen, SPEC)) == []


def test_decoding_uses_every_core_unless_told():
    from tsgf_lightning.data.datamodule import VideoDataModule

    assert decoding.default_workers() == len(os.sched_getaffinity(0))
    assert inspect.signature(VideoDataModule).parameters["decode_workers"].default is None


def test_tsgf_decode_in_two_shards_fills_the_cache_a_run_reads(tmp_path, tiny_embedded, subprocess_env):
    import yaml

    from tsgf_lightning.data.cache import cached_part_exists
    from tsgf_lightning.data.datamodule import VideoDataModule

    cache = tmp_path / "cache"
    data = {"frames": 8, "size": 48, "val_fraction": 0.25, "decode_workers": 1, "cache_dir": str(cache)}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({"data": {"source": tiny_embedded.yaml_source(), **data}}))
    procs = [subprocess.Popen([sys.executable, "-m", "tsgf_lightning", "decode", "--config", "data.yaml", "--shard",
                               str(i), "--num-shards", "2"], cwd=tmp_path, env=subprocess_env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    dm = VideoDataModule(tiny_embedded.source(), **data)
    items = dm.items_by_part()
    for part in ("fit", "val", "test"):
        assert cached_part_exists(str(cache), dm.source.cache_key(), part, items[part], dm.clip_spec(part)), part
        assert any(line.startswith(f"{part}: {cache}") for out, _ in outs for line in out.splitlines()), outs
    assert all(p.name.endswith(".pt") for p in cache.iterdir())  # published, no partial left


def test_worker_processes_fed_a_block_at_a_time_give_the_same_cache(tmp_path, dozen, monkeypatch):
    """Two forked workers, jobs handed over 5 at a time (3 blocks, the last short): the one-process bytes."""
    want = reference(tmp_path, dozen)
    monkeypatch.setattr(decoding, "SUBMIT_BLOCK", 5)
    folder = tmp_path / "blocks"
    with pytest.warns(UserWarning, match="v02.mkv"):
        load_or_decode(str(folder), SOURCE, "fit", dozen, SPEC, workers=2, max_bad_fraction=0.2)
    same_cache(folder, dozen, want)
    assert gc.get_freeze_count() == 0  # the parent's objects are collectable again
