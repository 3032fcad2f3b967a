"""A wrong input never trains silently: a damaged decode cache is named and decoded again, an
unwritable cache directory is refused before any decoding, temporaries of killed saves are removed
without touching a live writer's, and unreadable videos are reported on every load and may not
leave a training class without clips.

Decoding is counted with a wrapper around the real :func:`~tsgf_lightning.data.cache.decode_part`,
so "nothing was decoded" is checked, not inferred from timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from tsgf_lightning.atomic import temp_sibling as temp_path
from tsgf_lightning.data import cache
from tsgf_lightning.data.cache import cache_file, decode_part, load_or_decode
from tsgf_lightning.data.datamodule import VideoDataModule
from tsgf_lightning.data.integrity import has_record
from tsgf_lightning.data.sources import VideoFolder, validation_split

from .test_cache import SOURCE, SPEC


@pytest.fixture
def decodes(monkeypatch) -> list[int]:
    """The number of videos of every :func:`decode_part` call made through the cache (the real one runs)."""
    calls: list[int] = []
    real = cache.decode_part

    def counting(items, *args, **kwargs):
        calls.append(len(items))
        return real(items, *args, **kwargs)

    monkeypatch.setattr(cache, "decode_part", counting)
    return calls


def stored(key: Path) -> Path:
    found = [p for p in key.parent.iterdir() if p.name.startswith(key.stem + ".")]
    assert len(found) == 1 and has_record(found[0]), found
    return found[0]


def messages(record) -> list[str]:
    return [str(w.message) for w in record]


def spoil(path: Path) -> None:
    path.write_bytes(b"\x1aE\xdf\xa3 not really matroska" * 40)


def folder_dm(root: Path, cache_dir: Path, **kwargs) -> VideoDataModule:
    args = dict(frames=8, size=48, flip=False, batch_size=8, num_workers=0, decode_workers=1, cache_dir=str(cache_dir))
    return VideoDataModule(VideoFolder(str(root)), **{**args, **kwargs})


# ------------------------------------------------------------------------------------ damaged caches

def test_a_truncated_cache_is_named_and_decoded_again(tmp_path, videos, decodes):
    folder = tmp_path / "cache"
    fresh = load_or_decode(str(folder), SOURCE, "fit", videos, SPEC, workers=1)
    fresh.clips, fresh.labels = fresh.clips.clone(), fresh.labels.clone()  # mapped on the cache, like every load
    path = stored(cache_file(str(folder), SOURCE, "fit", videos, SPEC))
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.warns(UserWarning, match="decode cache") as record:
        again = load_or_decode(str(folder), SOURCE, "fit", videos, SPEC, workers=1)
    bad = [m for m in messages(record) if "decode cache" in m]
    assert len(bad) == 1 and str(path) in bad[0] and f"is {size // 2} bytes but was written with {size}" in bad[0]
    assert "truncated" in bad[0]
    assert decodes == [6, 6]
    assert torch.equal(again.clips, fresh.clips) and torch.equal(again.labels, fresh.labels)
    assert again.paths == fresh.paths and again.skipped == []
    assert stored(cache_file(str(folder), SOURCE, "fit", videos, SPEC)).stat().st_size == size
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt cache verifies: no warning, no decode
        load_or_decode(str(folder), SOURCE, "fit", videos, SPEC, workers=1)
    assert decodes == [6, 6]


def test_bytes_changed_inside_a_cache_of_the_same_size_are_detected_and_decoded_again(tmp_path, videos, decodes):
    folder = tmp_path / "cache"
    fresh = load_or_decode(str(folder), SOURCE, "fit", videos, SPEC, workers=1)
    fresh.clips, fresh.labels = fresh.clips.clone(), fresh.labels.clone()  # mapped on the cache, like every load
    path = stored(cache_file(str(folder), SOURCE, "fit", videos, SPEC))
    st = path.stat()
    raw = bytearray(path.read_bytes())
    at = raw.find(fresh.clips.numpy().tobytes()[:64]) + 100  # inside the clips' pixels
    assert at > 100
    raw[at:at + 256] = bytes(255 - b for b in raw[at:at + 256])
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size
    garbage = torch.load(path, mmap=True, weights_only=True)  # loads fine: what an unchecked load would serve
    assert not torch.equal(garbage["clips"], fresh.clips)
    del garbage
    with pytest.warns(UserWarning, match="decode cache") as record:
        again = load_or_decode(str(folder), SOURCE, "fit", videos, SPEC, workers=1)
    bad = [m for m in messages(record) if "decode cache" in m]
    assert len(bad) == 1 and str(path) in bad[0] and "CRC-32" in bad[0] and "bytes changed on disk" in bad[0]
    assert decodes == [6, 6]
    assert torch.equal(again.clips, fresh.clips) and torch.equal(again.labels, fresh.labels)


def test_a_cache_without_its_record_is_named_and_decoded_again(tmp_path, videos, decodes):
    folder = tmp_path / "cache"
    folder.mkdir()
    key = cache_file(str(folder), SOURCE, "fit", videos, SPEC)
    want = decode_part(videos, SPEC, workers=1)
    torch.save(want.to_dict(), key)  # the record-less name every cache had before records existed
    with pytest.warns(UserWarning, match="no size/checksum record") as record:
        again = load_or_decode(str(folder), SOURCE, "fit", videos, SPEC, workers=1)
    assert any(str(key) in m for m in messages(record))
    assert decodes == [6] and not key.exists()
    assert torch.equal(again.clips, want.clips)
    assert stored(key).name != key.name


# ------------------------------------------------------------------------------ the cache directory

@pytest.mark.parametrize("blocked", ["under a file", "read-only folder"])
def test_an_unwritable_cache_dir_fails_before_any_decoding(tmp_path, videos, decodes, tiny_embedded, blocked):
    if blocked == "under a file":
        (tmp_path / "file").write_text("")
        folder = tmp_path / "file" / "cache"  # no one, root included, can make a folder inside a file
    else:
        folder = tmp_path / "cache"
        folder.mkdir()
        folder.chmod(0o555)
        if os.access(folder, os.W_OK):
            folder.chmod(0o755)
            pytest.skip("running as root: a read-only mode does not stop this user writing")
    try:
        with pytest.raises(OSError, match=r"\(config key `data\.cache_dir`\) is not writable") as err:
            load_or_decode(str(folder), SOURCE, "fit", videos, SPEC, workers=1)
        assert f"cache directory {folder} " in str(err.value) and "Nothing was decoded" in str(err.value)
        dm = VideoDataModule(tiny_embedded.source(), frames=8, size=48, num_workers=0, decode_workers=1,
                             cache_dir=str(folder))
        with pytest.raises(OSError, match=r"data\.cache_dir"):
            dm.prepare_data()
        assert decodes == []
    finally:
        if folder.is_dir():
            folder.chmod(0o755)


def test_temporaries_of_killed_saves_are_removed_and_live_writers_kept(tmp_path, videos):
    folder = tmp_path / "cache"
    folder.mkdir()
    key = cache_file(str(folder), SOURCE, "fit", videos, SPEC)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        # A save killed mid-write: the child writes its temporary as a save of its own pid names it, then dies.
        template = str(temp_path(key)).replace(f".{os.getpid()}@", ".PID@")
        killed = subprocess.run(
            [sys.executable, "-c", "import os, signal; from pathlib import Path; "
             f"Path({template!r}.replace('PID', str(os.getpid()))).write_bytes(b'PK half a zip'); "
             "os.kill(os.getpid(), signal.SIGKILL)"], capture_output=True, text=True, check=False)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        dead = [p for p in folder.iterdir() if p.name.endswith(".tmp")]
        assert len(dead) == 1, dead
        dead_pid = dead[0].name.split(".")[-2].split("@")[0]
        other = key.with_name("folder-test-4x12x16-k1-0123456789abcdef.pt")
        names = {
            "dead, legacy name": f".{key.name}.{dead_pid}.tmp",
            "live, another process": temp_path(key).name.replace(f".{os.getpid()}@", f".{live.pid}@"),
            "live, legacy name": f".{other.name}.{live.pid}.tmp",
            "live, this process": temp_path(other).name,
            "another host": f".{key.name}.{dead_pid}@elsewhere.tmp",
            "not a cache": f".notes.txt.{dead_pid}.tmp",
        }
        for name in names.values():
            (folder / name).write_bytes(b"PK")
        load_or_decode(str(folder), SOURCE, "fit", videos, SPEC, workers=1)
        left = {p.name for p in folder.iterdir()}
        assert dead[0].name not in left and names["dead, legacy name"] not in left
        assert {n for k, n in names.items() if k != "dead, legacy name"} <= left
        assert len(left) == len(names) - 1 + 1  # the kept temporaries and the new cache
    finally:
        live.kill()
        live.wait()


# ----------------------------------------------------------------------------- unreadable videos

def test_a_class_whose_training_videos_are_all_unreadable_is_an_error_on_every_load(tiny_embedded, tmp_path,
                                                                                     decodes):
    root = tiny_embedded.copy_to(tmp_path / "folder")
    bad = sorted((root / "train" / "grow").iterdir())
    assert len(bad) == tiny_embedded.train_per_class
    for path in bad:
        spoil(path)
    folder = tmp_path / "cache"
    with pytest.raises(RuntimeError, match=r"Expected every class to have a training clip in part 'fit'") as err, \
            pytest.warns(UserWarning):
        folder_dm(root, folder, max_bad_fraction=0.2).prepare_data()  # 4 of 32 unreadable: tolerated overall
    text = str(err.value)
    assert "'grow' (all 4 of its videos are unreadable" in text and all(str(p) in text for p in bad), text
    assert decodes == [32]
    # A later run finds the cache (written: the decode itself succeeded) and refuses again, naming the same files.
    with pytest.raises(RuntimeError, match=r"'grow' \(all 4 of its videos are unreadable") as again, \
            pytest.warns(UserWarning, match="skipped 4 of 32"):
        folder_dm(root, folder, max_bad_fraction=0.2).setup("fit")
    assert all(str(p) in str(again.value) for p in bad)
    assert decodes == [32]


def test_skipped_videos_are_reported_on_every_load_and_exposed(tiny_embedded, tmp_path, decodes):
    root = tiny_embedded.copy_to(tmp_path / "folder")
    bad = sorted((root / "train" / "shrink").iterdir())[1]
    spoil(bad)
    folder = tmp_path / "cache"
    dm = folder_dm(root, folder)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        dm.prepare_data()
    assert any("part 'fit': skipped 1 of 32 unreadable videos" in m and str(bad) in m for m in messages(record))
    assert dm.skipped_videos() == {"fit": [str(bad)], "test": []}
    assert decodes == [32, 16]

    later = folder_dm(root, folder)
    assert later.skipped_videos() == {}
    with pytest.warns(UserWarning, match=r"part 'fit': skipped 1 of 32 unreadable videos") as record:
        later.setup("fit")
    assert any(str(bad) in m for m in messages(record))
    assert decodes == [32, 16]  # from the cache
    assert later.skipped_videos() == {"fit": [str(bad)]}
    assert len(later.train_data) == 31


def test_evaluation_parts_may_lack_a_class_and_test_says_so(tiny_embedded, tmp_path, decodes):
    root = tiny_embedded.copy_to(tmp_path / "folder")
    val_items = validation_split(VideoFolder(str(root)).items("train"), 0.25, 0)[1]
    val_bad = next(Path(i.path) for i in val_items if Path(i.path).parent.name == "rotate_cw")
    test_bad = sorted((root / "test" / "move_up").iterdir())
    for path in [val_bad, *test_bad]:
        spoil(path)
    dm = folder_dm(root, tmp_path / "cache", val_fraction=0.25, max_bad_fraction=0.2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        dm.prepare_data()
    found = messages(record)
    assert any("part 'val': skipped 1 of 8" in m for m in found) and any("part 'test': skipped 2 of 16" in m
                                                                            for m in found)
    lacking = [m for m in found if m.startswith("Expected every class")]
    assert len(lacking) == 1 and "part 'test'" in lacking[0] and "'move_up' (all 2 of its videos" in lacking[0]
    assert dm.skipped_videos() == {"fit": [], "val": [str(val_bad)], "test": [str(p) for p in test_bad]}
    assert dm.class_names.index("rotate_cw") not in dm.part("val").labels.tolist()  # its one validation video
