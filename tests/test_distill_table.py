"""benchmarks/distill_table.py: the configs and plan it derives for a dataset root, and one real run.

The end-to-end test decodes real (lossless) videos in the official UCF101 layout that the test
writes, runs every stage as a real process at a toy size, and checks the table it writes.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from tsgf_lightning.pipeline import load_pipeline_config, plan
from tsgf_lightning.results import ROW_KEYS

REPO = Path(__file__).resolve().parents[1]
MAIN = ["full", "random", "random+student", "random+student-f2", "herding", "kcenter", "sre2l", "tsgf"]


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location("distill_table", REPO / "benchmarks" / "distill_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_ucf_videos(root: Path, write_video, classes=("Left", "Right", "Still"), train: int = 4, test: int = 2,
                    frames: int = 10) -> Path:
    """Official layout with real decodable videos: a bright square moving left, right or not at all."""
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("".join(f"{i} {c}\r\n" for i, c in enumerate(classes, 1)))
    trainlist, testlist = [], []
    for cid, cls in enumerate(classes, 1):
        (root / "UCF-101" / cls).mkdir(parents=True)
        for g in range(1, train + test + 1):
            video = torch.zeros(frames, 24, 32, 3, dtype=torch.uint8)
            for t in range(frames):
                x = 4 + g + (t if cls == "Left" else -t if cls == "Right" else 0) % 20
                video[t, 8:16, max(0, x): x + 8] = 200
            rel = f"{cls}/v_{cls}_g{g:02d}_c01.avi"
            write_video(root / "UCF-101" / rel, video)
            (testlist.append(rel) if g <= test else trainlist.append(f"{rel} {cid}"))
    (lists / "trainlist01.txt").write_text("\r\n".join(trainlist))
    (lists / "testlist01.txt").write_text("\r\n".join(testlist))
    return root


def test_configs_and_plan_for_a_dataset_root(tmp_path, table, capsys):
    root = tmp_path / "data"
    root.mkdir()
    out = tmp_path / "out"
    table.main(["--data-root", str(root), "--layout", "hmdb51", "--frames", "4", "--size", "32", "--ipc", "1", "5",
                "--seeds", "2", "--ablation-seeds", "1", "--ablation-ipc", "10", "--output-dir", str(out), "--dry-run"])
    cfg = out / "configs"
    for name in ("teacher", "synthesis", "student"):
        data = yaml.safe_load((cfg / f"{name}.yaml").read_text())["data"]
        assert data["source"] == {"class_path": "tsgf_lightning.data.sources.HMDB51",
                                  "init_args": {"root": str(root.resolve())}}
        assert (data["frames"], data["size"], data["val_fraction"]) == (4, 32, 0.0)  # the table trains on all
    syn = yaml.safe_load((cfg / "synthesis.yaml").read_text())["model"]["init_args"]
    assert (syn["factor"], syn["lr"], syn["bn_weight"], syn["mask_source"]) == (2, 0.01, 0.001, "init")

    stages = plan(cfg, out, load_pipeline_config(cfg / "pipeline.yaml"))
    students = {(st.method, st.ipc): [] for st in stages if st.kind == "student"}
    for st in stages:
        if st.kind == "student":
            students[(st.method, st.ipc)].append(st.seed)
    for method in MAIN[1:]:
        assert students[(method, 1)] == [0, 1] and students[(method, 5)] == [0, 1], method
    for method in ("tsgf-O_off", "tsgf-A_off", "tsgf-eq8", "tsgf-eq8-signed", "tsgf-noise", "tsgf-ConvNet3D",
                   "tsgf-CNNLSTM", "tsgf-CNNGRU"):
        assert [k for (m, k) in students if m == method] == [1] and students[(method, 1)] == [0], method
    assert students[("tsgf-more", 10)] == [0] and students[("random+student-more", 10)] == [0]
    assert ("tsgf", 10) not in students
    by_name = {st.name: st for st in stages}
    # coresets are real clips exported by a zero-step synthesis; sre2l has neither TSGF part
    herding = by_name["synthesis_herding_ipc5"].command()
    assert "--model.init_args.init_select=herding" in herding and "--trainer.max_steps=0" in herding
    assert "--model.init_args.factor=1" in herding
    assert "--model.init_args.mask=none" in by_name["synthesis_sre2l_ipc1"].command()
    assert "--model.init_args.mix=videomix" in by_name["student_sre2l_ipc1_seed0"].command()
    gru = by_name["student_tsgf-CNNGRU_ipc1_seed0"].command()
    assert '--model.init_args.backbone={"class_path": "tsgf_lightning.models.CNNGRU"}' in gru
    assert "student herding ipc5 seed1" in capsys.readouterr().out
    # the paper's baselines, every row again under the published VDSD evaluation, MTT after its experts
    for name in ("dm", "mtt", "vdsd", "experts"):
        assert yaml.safe_load((cfg / f"{name}.yaml").read_text())["data"]["frames"] == 4
    for method in ("dm", "mtt", "vdsd", "tsgf@vdsd", "dm@vdsd", "random@vdsd", "sre2l@vdsd"):
        assert students[(method, 1)] == [0, 1] and students[(method, 5)] == [0, 1], method
    assert ("full@vdsd", 1) not in students
    assert by_name["mtt_ipc5"].needs == ("experts_0", "experts_1")
    vdsd = yaml.safe_load((cfg / "vdsd.yaml").read_text())
    assert vdsd["trainer"]["max_steps"] == 300 and vdsd["model"]["init_args"]["static_steps"] == 50
    assert "--model.init_args.lr_from_set=true" in by_name["student_mtt@vdsd_ipc1_seed0"].command()


def test_templates_read_alike_in_the_composed_and_the_whole_file_layout(tmp_path, table, monkeypatch):
    composed = table.templates()
    assert all(cfg["data"]["source"]["class_path"].endswith("UCF101") for cfg in composed.values())
    assert composed["synthesis.yaml"]["data"]["train_set"] == "none"
    assert composed["student.yaml"]["data"]["train_set"] == "distilled"
    # the same templates as whole files (each with the full data block, synthesis as synthesis_ipc1.yaml)
    whole = tmp_path / "whole"
    whole.mkdir()
    for name, cfg in composed.items():
        (whole / ("synthesis_ipc1.yaml" if name == "synthesis.yaml" else name)).write_text(yaml.safe_dump(cfg))
    monkeypatch.setattr(table, "TEMPLATES", whole)
    assert table.templates() == composed
    # and back: data.yaml with the shared keys, stage files with only their own
    split = tmp_path / "split"
    split.mkdir()
    shared = {k: v for k, v in composed["teacher.yaml"]["data"].items()
              if all(cfg["data"].get(k) == v for cfg in composed.values())}
    (split / "data.yaml").write_text(yaml.safe_dump({"data": shared}))
    for name, cfg in composed.items():
        own = {k: v for k, v in cfg["data"].items() if k not in shared}
        (split / name).write_text(yaml.safe_dump({**cfg, "data": own}))
    monkeypatch.setattr(table, "TEMPLATES", split)
    assert table.templates() == composed and "source" in shared


def test_a_missing_data_root_is_named(tmp_path, table, capsys):
    with pytest.raises(SystemExit):
        table.main(["--data-root", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "out")])
    assert "nope is not a directory" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_whole_table_on_unseen_ucf_layout(tmp_path, table, write_video, monkeypatch):
    root = make_ucf_videos(tmp_path / "ucf", write_video, train=7)  # 4 clips per class at factor 2
    out = tmp_path / "out"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rows = table.main(["--data-root", str(root), "--frames", "4", "--size", "48", "--ipc", "1", "--seeds", "1",
                       "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache"),
                       "--teacher-epochs", "1", "--synthesis-steps", "2", "--student-steps", "2",
                       "--ablations", "mask", "--baselines", "--protocol", "tsgf",  # baselines: test_pipeline_baselines
                       "--search", "--search-lr", "0.01", "0.05", "--search-bn", "0.001",
                       "--search-val-fraction", "0.25", "--search-seeds", "1", "--extra-frames", "6"])
    search = json.loads((out / "search.json").read_text())
    # the search scored its students on its own carve-out and never on the test split
    assert yaml.safe_load((out / "search" / "configs" / "student.yaml").read_text())["data"]["val_fraction"] == 0.25
    for result in (out / "search" / "students").rglob("result.json"):
        assert "val" in json.loads(result.read_text()) and "test" not in json.loads(result.read_text())
    assert (out / "search" / "results.md").read_text().startswith("# Validation results")
    assert yaml.safe_load((out / "configs" / "student.yaml").read_text())["data"]["val_fraction"] == 0.0
    methods = [r["method"] for r in rows]
    assert set(methods) == {*MAIN, "tsgf-O_off", "random+student [6f]", "tsgf [6f]"}
    assert len(methods) == len(set(methods))
    six = yaml.safe_load((out / "frames6" / "configs" / "synthesis.yaml").read_text())
    assert six["data"]["frames"] == 6 and six["model"]["init_args"]["lr"] == search["chosen"]["lr"]
    for row in rows:
        assert list(row) == [*ROW_KEYS, "fingerprints"] and 0.0 <= row["top1_mean"] <= 1.0
        assert len(row["fingerprints"]) == row["seeds"] and all(len(f) == 12 for f in row["fingerprints"])
        assert row["ipc"] == (None if row["method"] == "full" else 1)
    assert [t["lr"] for t in search["trials"]] == [0.01, 0.05] and search["chosen"] in search["trials"]
    chosen = yaml.safe_load((out / "configs" / "synthesis.yaml").read_text())["model"]["init_args"]["lr"]
    assert chosen == search["chosen"]["lr"]
    for name in ("results.md", "accuracy_vs_ipc.png", "ablations.png", "run.json"):
        assert (out / name).stat().st_size > 0, name
    # the herding set holds real training clips: the teacher's pick, exported unchanged
    herding = torch.load(out / "synthesis" / "herding_ipc1" / "distilled.pt")
    assert herding["videos"].shape[0] == 3 and herding["factor"] == 1
    # --report-only runs nothing: a row whose only student is gone drops out, the rest stay as they were
    (out / "students" / "kcenter" / "ipc1" / "seed0" / "result.json").unlink()
    partial = table.main(["--data-root", str(root), "--frames", "4", "--size", "48", "--ipc", "1", "--seeds", "1",
                          "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache"),
                          "--ablations", "mask", "--extra-frames", "6", "--report-only"])
    assert [r for r in rows if r["method"] != "kcenter"] == partial
    assert not (out / "students" / "kcenter" / "ipc1" / "seed0" / "result.json").exists()
    assert json.loads((out / "run.json").read_text())["report_only"] is True
    assert yaml.safe_load((out / "configs" / "student.yaml").read_text())["trainer"]["max_steps"] == 2  # as it ran
