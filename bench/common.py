"""Helpers shared by the benchmarks (run as scripts from bench/)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psutil

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RssSampler:
    """Peak RSS of each process tree, sampled every ``interval`` seconds.

    The sampler runs inside a measured process, so it is kept cheap: the
    process trees (a scan of all of /proc) are refreshed every ``rescan``
    samples, and the per-process peak is the kernel's own high-water mark.
    """

    def __init__(self, pids: dict[str, int], interval: float = 0.5, rescan: int = 10) -> None:
        self.pids = pids
        self.interval = interval
        self.rescan = rescan
        self.peak_process_mb = 0.0
        self.peak_tree_mb: dict[str, float] = dict.fromkeys(pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _tree(pid: int) -> list[psutil.Process]:
        try:
            root = psutil.Process(pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def _run(self) -> None:
        trees: dict[str, list[psutil.Process]] = {}
        samples = 0
        while not self._stop.wait(self.interval):
            if samples % self.rescan == 0:
                trees = {name: self._tree(pid) for name, pid in self.pids.items()}
            samples += 1
            for name, procs in trees.items():
                total = 0.0
                for p in procs:
                    try:
                        total += p.memory_info().rss / 2**20
                        peak_kb = _high_water_kb(p.pid)
                    except (psutil.Error, OSError):
                        continue
                    self.peak_process_mb = max(self.peak_process_mb, peak_kb / 1024)
                self.peak_tree_mb[name] = max(self.peak_tree_mb[name], total)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class OpSampler:
    """CPU seconds per operation of ``batch()``, sampled every ``interval`` seconds.

    Runs on a thread of a measured process while the run goes on, so the
    single-operation speed is taken under the run's own conditions (this
    VM's speed drifts by 10% over minutes). ``time.thread_time`` counts only
    this thread's time on a core, not its waits for one. ``batch`` returns how
    many operations it did.
    """

    def __init__(self, batch: Callable[[], int], interval: float = 5.0) -> None:
        self.batch = batch
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> float:
        start = time.thread_time()
        ops = self.batch()
        per_op = (time.thread_time() - start) / ops
        self.samples.append(per_op)
        return per_op

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> OpSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _high_water_kb(pid: int) -> int:
    """VmHWM: the process's peak resident set so far, as the kernel counts it (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


@dataclass
class BenchNode:
    """A brand node in its own process (``cleanroom serve``) with one tenant."""

    process: subprocess.Popen[bytes]
    target: str
    tokens: dict[str, str]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def start_node(data_dir: Path, workers: int, env: dict[str, str] | None = None) -> BenchNode:
    cli = [sys.executable, "-m", "cleanroom.client.cli"]
    created = subprocess.run(
        [
            *cli,
            "tenant",
            "create",
            "bench",
            "--data-dir",
            str(data_dir),
            "--json",
            "--min-partner-records",
            "1",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    port = free_port()
    process = subprocess.Popen(
        [
            *cli,
            "serve",
            "--data-dir",
            str(data_dir),
            "--grpc-port",
            str(port),
            "--http-port",
            "0",
            "--workers",
            str(workers),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    return BenchNode(process, f"127.0.0.1:{port}", json.loads(created.stdout)["tokens"])


def retry_until_up(node: BenchNode, action: Callable[[], T], seconds: float = 60) -> T:
    """Run the first call against a node that may still be starting."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return action()
        except Exception:
            if time.monotonic() > deadline or node.process.poll() is not None:
                raise
            time.sleep(0.5)
