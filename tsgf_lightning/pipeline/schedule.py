"""Running stages: one scheduler for one stage at a time (``jobs: 1``) or several at once.

Each stage is its own process, its output appended to ``OUT/logs/<stage>.log``. A stage starts when
the stages it ``needs`` have finished, a job slot is free and its GPUs can be placed
(:mod:`~.devices`). One at a time, the stage's line stays open and shows its own progress bar (read
back from its log); with several, each stage prints a ``started`` and a ``done in`` line. Concurrent
stages share the cores: each gets ``cores / stages running`` threads (``OMP_NUM_THREADS``, unless
the user set it). Ctrl-C or SIGTERM stops the running stages (they resume from their last
checkpoint next time) and raises a PipelineError that says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..freshness import incomplete
from .collect import summary
from .config import PipelineError
from .devices import Want, place, visible_devices
from .plan import Stage
from .progress import StageProgress


class Terminated(Exception):
    """SIGTERM arrived while :func:`sigterm_raises` was active."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def sigterm_raises():
    """SIGTERM raises :class:`Terminated` in the main thread (so the scheduler can stop its stages) while active."""
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def lock_output(out: Path):
    """An exclusive lock on ``OUT`` for this process and its stages (passed down), so two pipelines never share OUT."""
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / ".pipeline.lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise PipelineError(f"{out} is in use by another pipeline (or a stage it started is still running)") from None
    return f


def threads_per_job(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // jobs)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM (Lightning stops at the next batch and exits), then SIGKILL after 30 s; then whatever it started.

    A stage runs in a session of its own, so its decode workers, DataLoader workers and DDP ranks are
    its process group: they are killed with it instead of living on as orphans (holding memory, and
    decode workers still writing rows).
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # nothing of the group is left
        pass


def tail(path: Path, n: int = 15) -> str:
    lines = path.read_text(errors="replace").replace("\r", "\n").splitlines()
    return "\n".join("  " + line for line in lines[-n:])


def failed(st: Stage, rc: int | None, log_path: Path) -> PipelineError:
    why = f"exit code {rc}" if rc != 0 else f"exit code 0, but {incomplete(st) or 'its outputs are incomplete'}"
    return PipelineError(f"stage {st.title} failed ({why}); its log is {log_path}. Last lines:\n"
                         f"{tail(log_path)}\nFix the cause and run the same command again: finished stages are "
                         "skipped.")


@dataclass
class _Running:
    stage: Stage
    head: str
    proc: subprocess.Popen
    log: BinaryIO
    gpus: tuple[int, ...]
    digest: str | None
    progress: StageProgress | None = None   # one stage at a time: its line, with its bar
    reader: BinaryIO | None = None          # the log, read back for the bar
    start: float = field(default_factory=time.time)

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress.finish(text)
        else:
            print(f"{self.head} ... {text}", flush=True)

    def close(self) -> None:
        self.log.close()
        if self.reader is not None:
            self.reader.close()


@dataclass
class Scheduler:
    """Runs stages as processes, ``jobs`` at once, each on GPUs of its own.

    Attributes:
        logs: where each stage's log goes (``<name>.log``, appended to, each attempt headed by its command).
        jobs: stages running at once at most; 1 also keeps each stage's line open for its bar.
        gpus: the visible GPUs' ``CUDA_VISIBLE_DEVICES`` ids (:func:`~.devices.detect_gpus`); empty: no placement.
        bar: show the running stage's progress bar (None: when stdout is a terminal); ``jobs: 1`` only.
        prepare: called right before a stage starts; returns its fingerprint digest (or None).
        finished: called after a stage succeeded, with it, its wall time and the digest ``prepare`` gave.
        pass_fds: file descriptors the stages inherit (the output dir's lock).
    """

    logs: Path
    jobs: int = 1
    gpus: tuple[str, ...] = ()
    bar: bool | None = None
    prepare: Callable[[Stage], str | None] = lambda st: None
    finished: Callable[[Stage, float, str | None], None] = lambda st, wall, digest: None
    pass_fds: tuple[int, ...] = ()
    tick: float = 0.1

    def run(self, todo: list[Stage], heads: Mapping[str, str], wants: Mapping[str, Want] | None = None) -> None:
        """Run each stage of ``todo`` (in plan order) once its needs are met; a failure raises PipelineError.

        ``heads``: each stage's line head (``[3/8] synthesis ipc1``); ``wants``: the GPUs each wants
        (:func:`~.devices.wanted`; missing: none). Needs outside ``todo`` count as met.
        """
        wants = wants or {}
        queue, running = list(todo), {}
        pending = {st.name for st in todo}
        if self.jobs > 1:
            gpus = f"; {len(self.gpus)} GPU(s), each stage on its own (CUDA_VISIBLE_DEVICES)" if self.gpus else ""
            print(f"running up to {self.jobs} stages at once, {threads_per_job(self.jobs)} thread(s) each (all cores "
                  f"for a stage that runs alone){gpus}; logs in {self.logs}", flush=True)
        try:
            while queue or running:
                for st, want, placed, slots in self._startable(queue, running, pending, wants):
                    running[st.name] = self._launch(st, heads[st.name], want, placed, slots)
                    queue.remove(st)
                if not running:
                    raise PipelineError(f"stages {[st.title for st in queue]} cannot start: they wait for each "
                                        "other, or want GPUs that are not there")
                time.sleep(self.tick)
                for name, run in list(running.items()):
                    if run.reader is not None:
                        run.progress.feed(run.reader.read())
                    rc = run.proc.poll()
                    if rc is None:
                        continue
                    del running[name]
                    run.close()
                    wall = time.time() - run.start
                    if rc != 0 or not run.stage.done():
                        run.say(f"FAILED after {wall:.0f}s (exit code {rc})")
                        raise failed(run.stage, rc, self.logs / f"{name}.log")
                    run.say(f"done in {wall:.0f}s: {summary(run.stage)[0]}")
                    pending.discard(name)
                    self.finished(run.stage, wall, run.digest)
        except (KeyboardInterrupt, Terminated):
            for run in running.values():
                if run.progress is not None:
                    run.say(f"interrupted after {time.time() - run.start:.0f}s")
            if len(running) == 1:
                [run] = running.values()
                raise PipelineError(f"interrupted during stage {run.stage.title} (log: {self.logs / run.stage.name}"
                                    ".log); run the same command again to resume it from its last checkpoint") from None
            raise PipelineError(f"interrupted during stages {[r.stage.title for r in running.values()]}; run the same "
                                "command again to resume them from their last checkpoints") from None
        finally:
            for run in running.values():
                stop(run.proc)
                run.close()

    def _startable(self, queue: list[Stage], running: dict[str, _Running], pending: set[str],
                   wants: Mapping[str, Want]) -> list[tuple[Stage, Want, tuple[int, ...], int]]:
        """The stages to start now, with their wants, GPUs and the number of stages sharing the cores then.

        Of the ready stages, smaller IPCs go first (their rows are complete early), and within an
        IPC synthesis before students (students wait for synthesis, not the other way round). A
        GPU stage that cannot be placed keeps the later GPU stages waiting too, so a stage that
        wants every GPU gets them when they free up instead of waiting behind a stream of small ones.
        """
        ready = [st for st in queue if not any(n in pending for n in st.needs)]
        ready.sort(key=lambda st: (st.ipc or 0, st.kind == "student"))  # stable: plan order within a key
        free = [i for i in range(len(self.gpus)) if not any(i in r.gpus for r in running.values())]
        chosen: list[tuple[Stage, Want, tuple[int, ...]]] = []
        gpus_waiting = False
        for st in ready:
            if len(running) + len(chosen) >= self.jobs:
                break
            want = wants.get(st.name) if self.gpus else None
            if want is not None and gpus_waiting:
                continue
            placed = place(want, free)
            if placed is None:
                gpus_waiting = True
                continue
            free = [i for i in free if i not in placed]
            chosen.append((st, want, placed))
        slots = len(running) + len(chosen)  # a stage that starts alone (the teacher) gets every core
        return [(st, want, placed, slots) for st, want, placed in chosen]

    def _launch(self, st: Stage, head: str, want: Want, placed: tuple[int, ...], slots: int) -> _Running:
        digest = self.prepare(st)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        notes = []
        if self.jobs > 1:
            # Small convolutions gain little from a second thread and lose much to contention: give
            # each of the concurrent stages its share of the cores (unless the user chose a count).
            env.setdefault("OMP_NUM_THREADS", str(threads_per_job(slots)))
            notes.append(f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}")
        visible = visible_devices(want, placed, self.gpus)
        if visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible
            notes.append(f"CUDA_VISIBLE_DEVICES={visible}")
        log_path = self.logs / f"{st.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {''.join(n + ' ' for n in notes)}"
                  f"{shlex.join(st.command())}\n".encode())
        log.flush()
        progress = StageProgress(head + " ...", self.bar) if self.jobs == 1 else None
        reader = None
        if progress is not None and progress.bar:
            reader = open(log_path, "rb")
            reader.seek(0, os.SEEK_END)
        try:
            proc = subprocess.Popen(st.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, pass_fds=self.pass_fds, start_new_session=True)  # see stop()
        except OSError:
            log.close()
            if reader is not None:
                reader.close()
            raise
        if progress is None:
            on = f" on GPU {','.join(self.gpus[i] for i in placed)}" if placed else ""
            print(f"{head} ... started{on}", flush=True)
        return _Running(st, head, proc, log, placed, digest, progress, reader)
