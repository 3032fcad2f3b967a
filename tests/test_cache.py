"""The decoded-split cache: keyed by everything that shapes the clips, written atomically under a name
that records its size and checksum, read back with mmap and without decoding; corrupt videos skipped
and named, or refused when too many. Damaged caches, stale temporaries and unwritable cache
directories: tests/test_cache_integrity.py."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import pytest
import torch

from tsgf_lightning.data.cache import ClipSpec, cache_file, cached_part_exists, decode_part, load_or_decode
from tsgf_lightning.data.decode import decode_clips
from tsgf_lightning.data.integrity import has_record
from tsgf_lightning.data.partial import partial_files, rows_file
from tsgf_lightning.data.sources import VideoItem

SOURCE = {"kind": "folder", "root": "/data/videos", "classes": ["a", "b"]}
SPEC = ClipSpec(frames=4, size_hw=(12, 16))


def spoil(path: str, keep_stat: bool = True) -> None:
    """Overwrite a video with garbage of the same size; optionally restore its timestamps (same cache key)."""
    st = os.stat(path)
    Path(path).write_bytes(b"\x00garbage" * (st.st_size // 8) + b"\x00" * (st.st_size % 8))
    if keep_stat:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def stored(key: Path) -> Path:
    """The one file stored for the cache keyed ``key``: its name is the key's plus the integrity record."""
    found = [p for p in key.parent.iterdir() if p.name.startswith(key.stem + ".")]
    assert len(found) == 1 and has_record(found[0]), found
    return found[0]


# ----------------------------------------------------------------------------------------------- key

def test_every_input_of_the_clips_changes_the_key(tmp_path, videos):
    cache = str(tmp_path / "cache")
    base = cache_file(cache, SOURCE, "fit", videos, SPEC)
    assert base == cache_file(cache, dict(SOURCE), "fit", list(videos), ClipSpec(4, (12, 16)))  # deterministic
    assert base.parent == Path(cache) and base.suffix == ".pt" and "fit-4x12x16-k1" in base.name
    variants = {
        "frames": cache_file(cache, SOURCE, "fit", videos, ClipSpec(8, (12, 16))),
        "size": cache_file(cache, SOURCE, "fit", videos, ClipSpec(4, (12, 20))),
        "sampling": cache_file(cache, SOURCE, "fit", videos, ClipSpec(4, (12, 16), sampling="fixed_gap")),
        "gap": cache_file(cache, SOURCE, "fit", videos, ClipSpec(4, (12, 16), gap=2)),
        "positions": cache_file(cache, SOURCE, "fit", videos, ClipSpec(4, (12, 16), positions=(0.25,))),
        "clips per video": cache_file(cache, SOURCE, "fit", videos, ClipSpec(4, (12, 16), positions=(0.25, 0.75))),
        "source": cache_file(cache, {**SOURCE, "root": "/data/other"}, "fit", videos, SPEC),
        "class subset": cache_file(cache, {**SOURCE, "classes": ["a"]}, "fit", videos, SPEC),
        "split": cache_file(cache, SOURCE, "test", videos, SPEC),
        "file list": cache_file(cache, SOURCE, "fit", videos[:-1], SPEC),
        "labels": cache_file(cache, SOURCE, "fit", [VideoItem(v.path, 1 - v.label, v.group) for v in videos], SPEC),
    }
    assert base not in variants.values()
    assert len(set(variants.values())) == len(variants), variants


def test_the_key_follows_contents_not_timestamps(tmp_path, videos):
    """A copy of the dataset with new mtimes keeps its caches; any change to a video's bytes does not."""
    cache = str(tmp_path / "cache")
    path = videos[0].path
    before = cache_file(cache, SOURCE, "fit", videos, SPEC)
    Path(path).touch()  # new mtime, same bytes (a re-extracted or copied dataset)
    assert cache_file(cache, SOURCE, "fit", videos, SPEC) == before
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2] ^= 1  # one bit, same size
    st = os.stat(path)
    Path(path).write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))  # 1 microsecond later, within the same second
    flipped = cache_file(cache, SOURCE, "fit", videos, SPEC)
    assert flipped != before
    data[len(data) // 2] ^= 1
    Path(path).write_bytes(bytes(data))  # the original bytes again
    assert cache_file(cache, SOURCE, "fit", videos, SPEC) == before
    with open(path, "ab") as f:  # a different size
        f.write(b"\0")
    assert cache_file(cache, SOURCE, "fit", videos, SPEC) not in (before, flipped)


def test_digests_are_remembered_by_stat_and_read_once(tmp_path, videos, monkeypatch):
    import tsgf_lightning.data.digests as digests

    monkeypatch.setenv("TSGF_DIGESTS", str(tmp_path / "memo.json"))
    paths = [v.path for v in videos]
    naive = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]
    assert digests.content_digests(paths) == naive
    memo = json.loads((tmp_path / "memo.json").read_text())
    assert sorted(memo.values()) == sorted(naive) and len(memo) == len(paths)

    reads = []
    real = digests.sha256_file
    monkeypatch.setattr(digests, "sha256_file", lambda p: reads.append(p) or real(p))
    assert digests.content_digests(paths) == naive and reads == []  # every stat known: nothing read
    Path(paths[0]).touch()
    assert digests.content_digests(paths) == naive and reads == [paths[0]]  # only the touched file
    memo = json.loads((tmp_path / "memo.json").read_text())
    assert len(memo) == len(paths)  # the entry under the old stat was replaced, not kept beside
    assert digests.content_digests([*paths, str(tmp_path / "gone.avi")])[-1] is None


def test_the_memo_is_parsed_once_per_process_until_its_file_changes(tmp_path, videos, monkeypatch):
    import tsgf_lightning.data.digests as digests

    where = tmp_path / "memo.json"
    monkeypatch.setenv("TSGF_DIGESTS", str(where))
    paths = [v.path for v in videos]
    digests.content_digests(paths)
    parses = []
    real = digests.json.loads
    monkeypatch.setattr(digests.json, "loads", lambda text: parses.append(1) or real(text))
    for _ in range(3):  # a stage's three keys (fit, val, test)
        digests.content_digests(paths)
    assert len(parses) == 1  # parsed once, then known
    other = {k.replace(paths[0], "/elsewhere.avi"): v for k, v in real(where.read_text()).items()}
    where.write_text(json.dumps(other))  # another process rewrote it
    Path(paths[0]).touch()  # and this file's stat changed: it is hashed again and the memo merged
    naive = hashlib.sha256(Path(paths[0]).read_bytes()).hexdigest()
    assert digests.content_digests(paths)[0] == naive and len(parses) == 2  # parsed once: unchanged before the write
    assert any(k.startswith("/elsewhere.avi|") for k in real(where.read_text()))  # the other's entries kept


# ------------------------------------------------------------------------------------ write and read

def test_first_call_decodes_and_writes_second_call_loads_without_decoding(tmp_path, videos):
    cache = tmp_path / "cache"
    spec = ClipSpec(frames=4, size_hw=(12, 16), positions=(0.25, 0.75))
    assert not cached_part_exists(str(cache), SOURCE, "fit", videos, spec)
    first = load_or_decode(str(cache), SOURCE, "fit", videos, spec, workers=1)
    path = stored(cache_file(str(cache), SOURCE, "fit", videos, spec))
    assert files_in(cache) == [path.name]  # one file, no temporary left behind
    assert cached_part_exists(str(cache), SOURCE, "fit", videos, spec)
    assert first.clips.shape == (6, 2, 3, 4, 12, 16) and first.clips.dtype == torch.uint8
    for i, item in enumerate(videos):
        assert torch.equal(first.clips[i], decode_clips(item.path, 4, (12, 16), positions=(0.25, 0.75)))
    assert first.labels.tolist() == [v.label for v in videos] and first.labels.dtype == torch.int64
    assert first.paths == [v.path for v in videos] and first.groups == [v.group for v in videos]
    assert first.skipped == []

    # Make decoding impossible without changing the key: garbage of the same size, same mtime.
    written = path.stat().st_mtime_ns
    for item in videos:
        spoil(item.path)
    assert stored(cache_file(str(cache), SOURCE, "fit", videos, spec)) == path
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a decode attempt would warn about every video
        second = load_or_decode(str(cache), SOURCE, "fit", videos, spec, workers=1)
    assert path.stat().st_mtime_ns == written and files_in(cache) == [path.name]  # not rewritten
    assert torch.equal(second.clips, first.clips) and torch.equal(second.labels, first.labels)
    assert (second.paths, second.groups, second.skipped) == (first.paths, first.groups, first.skipped)
    if Path("/proc/self/maps").exists():  # loaded with mmap: the file is mapped, not read into memory
        assert str(path) in Path("/proc/self/maps").read_text()
    # And decoding them now really fails: the second result came from the cache.
    with pytest.raises(RuntimeError, match="could not be decoded"), pytest.warns(UserWarning):
        decode_part(videos, spec, workers=1)


def test_parallel_decoding_keeps_the_order(tmp_path, videos):
    serial = decode_part(videos, SPEC, workers=1)
    parallel = decode_part(videos, SPEC, workers=2)
    assert torch.equal(serial.clips, parallel.clips) and serial.paths == parallel.paths
    assert torch.equal(serial.labels, parallel.labels)


def test_a_failed_save_leaves_no_file(tmp_path, videos, monkeypatch):
    cache = tmp_path / "cache"
    real_save = torch.save

    def interrupted_save(obj, f, *args, **kwargs):
        half = b"PK\x03\x04 half a zip"  # what a crash mid-write leaves
        f.write(half) if hasattr(f, "write") else Path(f).write_bytes(half)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(OSError, match="disk full"):
        load_or_decode(str(cache), SOURCE, "fit", videos, SPEC, workers=1)
    key = cache_file(str(cache), SOURCE, "fit", videos, SPEC)
    # No cache and no temporary: only the decode's resumable partial (rows and journal), kept for the retry.
    assert files_in(cache) == sorted(p.name for p in partial_files(key)) and not rows_file(key).name.endswith(".pt")
    monkeypatch.setattr(torch, "save", real_save)
    load_or_decode(str(cache), SOURCE, "fit", videos, SPEC, workers=1)
    assert files_in(cache) == [stored(cache_file(str(cache), SOURCE, "fit", videos, SPEC)).name]


# ----------------------------------------------------------------------------------------- bad videos

def test_a_corrupt_video_is_skipped_named_and_counted(tmp_path, videos):
    cache = tmp_path / "cache"
    bad = videos[3].path
    spoil(bad)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        split = load_or_decode(str(cache), SOURCE, "fit", videos, SPEC, workers=2, max_bad_fraction=0.2)
    messages = [str(w.message) for w in record]
    assert any("clip3.mkv" in m for m in messages) and any("skipped 1 of 6" in m for m in messages), messages
    assert split.skipped == [bad]
    kept = [v for v in videos if v.path != bad]
    assert split.paths == [v.path for v in kept] and split.labels.tolist() == [v.label for v in kept]
    assert split.clips.shape[0] == 5
    for i, item in enumerate(kept):  # the clips still line up with their labels
        assert torch.equal(split.clips[i, 0], decode_clips(item.path, 4, (12, 16))[0])
    with pytest.warns(UserWarning, match=r"skipped 1 of 6 unreadable videos.*clip3\.mkv"):  # and reported again
        assert load_or_decode(str(cache), SOURCE, "fit", videos, SPEC, workers=1).skipped == [bad]  # cached too


def test_too_many_corrupt_videos_is_an_error_naming_them_and_nothing_is_written(tmp_path, videos):
    cache = tmp_path / "cache"
    for item in videos[1:3]:
        spoil(item.path)
    with pytest.raises(RuntimeError, match=r"2 of 6 videos.*max_bad_fraction=0.2.*clip1.mkv.*clip2.mkv"), \
            pytest.warns(UserWarning):
        load_or_decode(str(cache), SOURCE, "fit", videos, SPEC, workers=1, max_bad_fraction=0.2)
    assert files_in(cache) == []


def test_all_videos_corrupt_is_an_error_even_with_a_lenient_fraction(tmp_path, videos):
    for item in videos:
        spoil(item.path)
    with pytest.raises(RuntimeError, match="6 of 6"), pytest.warns(UserWarning):
        load_or_decode(str(tmp_path / "cache"), SOURCE, "fit", videos, SPEC, workers=1, max_bad_fraction=1.0)
    assert files_in(tmp_path / "cache") == []


def test_a_path_with_a_bar_keeps_one_memo_entry(tmp_path, monkeypatch):
    import tsgf_lightning.data.digests as digests

    monkeypatch.setenv("TSGF_DIGESTS", str(tmp_path / "memo.json"))
    odd = tmp_path / "a|b.avi"  # the memo key is "path|size|mtime|inode": the path is what precedes the last 3 bars
    odd.write_bytes(b"video")
    digests.content_digests([str(odd)])
    os.utime(odd, ns=(1, 1))
    assert digests.content_digests([str(odd)]) == [hashlib.sha256(b"video").hexdigest()]
    assert len(json.loads((tmp_path / "memo.json").read_text())) == 1
