"""The scheduler without training: GPU placement, the progress line, failures and interrupts.

Stages here are fake: each is ``python -c`` that sleeps, then writes a result.json holding the
environment it saw and when it ran, so a test reads back which GPUs it was given and what ran at
the same time (no GPU needed, a second or two per test).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

import pytest

from tsgf_lightning.pipeline import PipelineError, Scheduler, Stage, place, run_pipeline, wanted
from tsgf_lightning.pipeline.devices import detect_gpus, parse_nvidia_smi, visible_devices
from tsgf_lightning.pipeline.schedule import sigterm_raises

from .pipeline_utils import make_config_dir

FAKE = """
import json, os, sys, time
result, seconds, rc, output = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
start = time.time()
print(output, end="", flush=True)
time.sleep(seconds)
if rc:
    print("something broke", flush=True)
    sys.exit(rc)
os.makedirs(os.path.dirname(result), exist_ok=True)
env = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")}
with open(result, "w") as f:
    json.dump({"env": env, "start": start, "end": time.time(), "stage": {},
               "test": {"test/acc_top1": 0.5, "test/acc_top5": 1.0}}, f)
"""


@dataclass(frozen=True)
class Fake(Stage):
    seconds: float = 0.3
    rc: int = 0
    output: str = ""

    def command(self) -> list[str]:
        return [sys.executable, "-c", FAKE, str(self.result), str(self.seconds), str(self.rc), self.output]


def fake(tmp_path, name: str, **kwargs) -> Fake:
    return Fake(name, name, "synthesis", (), (), tmp_path / name / "result.json", **kwargs)


def ran(st: Stage) -> dict:
    return json.loads(st.result.read_text())


def overlap(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


# ---------------------------------------------------------------------- what a stage wants, where it fits
def test_wanted_reads_accelerator_and_devices_as_lightning_does():
    assert wanted({"accelerator": "cpu", "devices": 1}, 4) is None
    assert wanted({"accelerator": "gpu", "devices": 2}, 0) is None  # no GPUs here: nothing to place
    assert wanted({"accelerator": "auto", "devices": "auto"}, 0) is None
    assert wanted({"accelerator": "gpu", "devices": 2}, 4) == 2
    assert wanted({"accelerator": "cuda", "devices": "2"}, 4) == 2
    for every in (-1, "-1", "auto"):
        assert wanted({"accelerator": "auto", "devices": every}, 3) == (0, 1, 2)
    assert wanted({}, 2) == (0, 1)  # Lightning's defaults: auto, auto
    assert wanted({"accelerator": "gpu", "devices": [2, 0]}, 4) == (2, 0)
    assert wanted({"accelerator": "gpu", "devices": "1,"}, 4) == (1,)
    assert wanted({"accelerator": "mps", "devices": 1}, 4) is None
    with pytest.raises(ValueError, match=r"trainer.devices=3 asks for 3 GPU\(s\) but 2 are visible"):
        wanted({"accelerator": "gpu", "devices": 3}, 2)
    with pytest.raises(ValueError, match=r"names GPU\(s\) \[5\] but the visible ones are 0..1"):
        wanted({"accelerator": "gpu", "devices": [0, 5]}, 2)


def test_place_gives_free_gpus_or_waits():
    assert place(None, []) == ()  # a CPU stage always fits
    assert place(2, [3, 1, 0]) == (0, 1)
    assert place(2, [3]) is None
    assert place((0, 1, 2), [0, 1, 2]) == (0, 1, 2)
    assert place((0, 1, 2), [0, 2]) is None  # every GPU: only when all are free
    assert place((2,), [0, 2]) == (2,)
    # a count sees its GPUs only; named GPUs are indices into the full list, so that stage sees them all
    assert visible_devices(2, (1, 2), ("4", "5", "6")) == "5,6"
    assert visible_devices((2,), (2,), ("4", "5", "6")) == "4,5,6"
    assert visible_devices(None, (), ("4",)) is None


def test_the_gpus_are_found_without_torch():
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": "3,1"}) == ("3", "1")
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": ""}) == ()
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": "0,-1,2"}) == ("0",)  # CUDA stops at the first invalid entry
    smi = ("GPU 0: NVIDIA H100 (UUID: GPU-aaa)\n"
           "GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-bbb)\n"
           "  MIG 3g.20gb     Device  0: (UUID: MIG-ccc)\n"
           "  MIG 3g.20gb     Device  1: (UUID: MIG-ddd)\n"
           "GPU 2: NVIDIA H100 (UUID: GPU-eee)\n")
    assert parse_nvidia_smi(smi) == ("0", "MIG-ccc", "MIG-ddd", "2")
    assert parse_nvidia_smi("") == ()


# ---------------------------------------------------------------------- the scheduler
def test_each_stage_gets_gpus_of_its_own_and_one_that_wants_all_runs_alone(tmp_path):
    a, b, every, cpu = (fake(tmp_path, n, seconds=s) for n, s in (("a", 0.4), ("b", 0.8), ("every", 0.3),
                                                                   ("cpu", 0.4)))
    after_a = Fake("after_a", "after_a", "student", (), (), tmp_path / "after_a" / "result.json", needs=("a",))
    todo = [a, b, every, cpu, after_a]
    wants = {"a": 1, "b": 2, "every": (0, 1, 2), "cpu": None, "after_a": 1}
    Scheduler(tmp_path / "logs", jobs=4, gpus=("5", "6", "7")).run(todo, {st.name: st.name for st in todo}, wants)
    r = {st.name: ran(st) for st in todo}
    assert r["a"]["env"]["CUDA_VISIBLE_DEVICES"] == "5" and r["b"]["env"]["CUDA_VISIBLE_DEVICES"] == "6,7"
    assert r["every"]["env"]["CUDA_VISIBLE_DEVICES"] == "5,6,7"
    assert r["cpu"]["env"]["CUDA_VISIBLE_DEVICES"] is None  # a CPU stage's environment is left alone
    assert overlap(r["a"], r["b"]) and overlap(r["cpu"], r["b"])
    for other in ("a", "b", "after_a"):
        assert not overlap(r["every"], r[other]), other
    # after_a would fit beside b once a is done, but the stage that wants every GPU was waiting first
    assert r["after_a"]["start"] >= r["every"]["end"] and r["after_a"]["env"]["CUDA_VISIBLE_DEVICES"] == "5"
    # three stages started together share the cores
    assert r["a"]["env"]["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 3))
    assert "CUDA_VISIBLE_DEVICES=6,7 " in (tmp_path / "logs" / "b.log").read_text()


def test_without_gpus_wants_are_ignored_and_jobs_alone_limit_the_stages(tmp_path, capsys):
    todo = [fake(tmp_path, n) for n in ("a", "b", "c")]
    Scheduler(tmp_path / "logs", jobs=2).run(todo, {st.name: f"[{st.name}]" for st in todo},
                                             {st.name: 1 for st in todo})
    r = [ran(st) for st in todo]
    assert overlap(r[0], r[1]) and r[2]["start"] >= min(r[0]["end"], r[1]["end"])
    assert all(x["env"]["CUDA_VISIBLE_DEVICES"] is None for x in r)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("running up to 2 stages at once")
    assert lines[1:3] == ["[a] ... started", "[b] ... started"]
    assert sum(" ... done in " in line for line in lines) == 3


def test_one_stage_at_a_time_shows_its_bar_on_its_line_and_logs_its_output(tmp_path, capsys):
    st = fake(tmp_path, "a", seconds=0.6, output=" 40%|####      | 4/10 [00:01<00:02]\r")
    Scheduler(tmp_path / "logs", jobs=1, bar=True).run([st], {"a": "[1/1] a"})
    out = capsys.readouterr().out
    assert out.startswith("[1/1] a ...\r[1/1] a ... 40%|####      | 4/10 [00:01<00:02]\x1b[K")
    assert out.endswith("\r[1/1] a ...\x1b[K done in 1s: top1 0.500\n")
    log = (tmp_path / "logs" / "a.log").read_text()
    assert log.startswith("\n=== ") and " 40%|####" in log
    assert ran(st)["env"]["OMP_NUM_THREADS"] is None  # one at a time: the thread count is the user's


def test_a_failed_stage_stops_the_others_and_names_its_log(tmp_path, capsys):
    slow, broken = fake(tmp_path, "slow", seconds=30), fake(tmp_path, "broken", seconds=0.2, rc=3)
    start = time.time()
    with pytest.raises(PipelineError, match=r"(?s)stage broken failed \(exit code 3\); its log is .*broken.log.*"
                                            r"something broke.*run the same command again"):
        Scheduler(tmp_path / "logs", jobs=2).run([slow, broken], {"slow": "slow", "broken": "broken"})
    assert time.time() - start < 15 and not slow.result.exists()
    assert "broken ... FAILED after 0s (exit code 3)" in capsys.readouterr().out


def test_sigterm_stops_the_running_stage_and_says_how_to_resume(tmp_path):
    st = fake(tmp_path, "a", seconds=30)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    start = time.time()
    try:
        with sigterm_raises(), pytest.raises(PipelineError, match=r"interrupted during stage a \(log: .*a\.log\); "
                                                                  "run the same command again to resume it"):
            timer.start()
            Scheduler(tmp_path / "logs", jobs=1, bar=False).run([st], {"a": "a"})
    finally:
        timer.cancel()
    assert time.time() - start < 15 and not st.result.exists()


FORKING = """
import os, signal, sys, time
if os.fork() == 0:  # a worker that outlives SIGTERM, as decode workers and DDP ranks can
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(sys.argv[1], "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)
    os._exit(0)
time.sleep(120)
"""


@dataclass(frozen=True)
class Forking(Stage):
    def command(self) -> list[str]:
        return [sys.executable, "-c", FORKING, str(self.result.parent / "worker.pid")]


def test_a_stopped_stage_takes_the_processes_it_started_with_it(tmp_path):
    st = Forking("a", "a", "synthesis", (), (), tmp_path / "a" / "result.json")
    st.result.parent.mkdir(parents=True)
    pid_file = st.result.parent / "worker.pid"

    def interrupt() -> None:
        while not pid_file.exists() or not pid_file.read_text():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    timer = threading.Thread(target=interrupt, daemon=True)
    try:
        with sigterm_raises(), pytest.raises(PipelineError, match="interrupted during stage a"):
            timer.start()
            Scheduler(tmp_path / "logs", jobs=1, bar=False).run([st], {"a": "a"})
    finally:
        worker = int(pid_file.read_text())
    for _ in range(100):  # killed: gone, or a zombie where nothing reaps the orphan
        try:
            os.kill(worker, 0)
            if open(f"/proc/{worker}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        except (ProcessLookupError, FileNotFoundError):
            break
        time.sleep(0.05)
    else:
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the stage's worker outlived the stage")


def test_a_stage_wanting_more_gpus_than_there_are_is_refused_before_anything(tmp_path, tiny_embedded,
                                                                             shared_cache_dir, capsys):
    cfg = make_config_dir(tmp_path / "cfg", tiny_embedded, shared_cache_dir,
                          {"ipc": [1], "seeds": 1, "methods": ["full"]})
    teacher = cfg / "teacher.yaml"
    teacher.write_text(teacher.read_text().replace("accelerator: cpu", "accelerator: gpu").replace("devices: 1",
                                                                                                   "devices: 3"))
    assert run_pipeline(cfg, tmp_path / "out", dry_run=True, gpus=0) == []  # no GPUs: nothing to place
    assert "[1/1] teacher (new)" in capsys.readouterr().out
    with pytest.raises(PipelineError, match=r"stage teacher cannot run here: trainer.devices=3 asks for 3 GPU\(s\) "
                                            r"but 2 are visible .*set trainer.devices in data.yaml \+ teacher.yaml"):
        run_pipeline(cfg, tmp_path / "out", dry_run=True, gpus=2)
    assert not (tmp_path / "out").exists()
