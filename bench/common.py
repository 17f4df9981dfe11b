"""Helpers shared by the benchmarks (run as scripts from bench/)."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import TypeVar

import numpy as np
import psutil

from cleanroom.matching.x25519 import BlindingKey, blind_batch

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
        # Every process seen: its tree's name, what it is (``kind``) and its peak.
        self.processes: dict[int, tuple[str, str, float]] = {}
        # The CPU seconds (user + system) each used, as last sampled: where a run's time
        # above its floor went.
        self.cpu_seconds: dict[int, float] = {}
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
            self._sample(trees)

    def _sample(self, trees: dict[str, list[psutil.Process]]) -> None:
        for name, procs in trees.items():
            total = 0.0
            for p in procs:
                try:
                    total += p.memory_info().rss / 2**20
                    peak_kb = high_water_kb(p.pid)
                    used = p.cpu_times()
                    self.cpu_seconds[p.pid] = used.user + used.system
                except (psutil.Error, OSError):
                    continue
                self.peak_process_mb = max(self.peak_process_mb, peak_kb / 1024)
                # A process in two trees (the node is the partner's child here) is its own
                # tree's, the first to claim it.
                tree, kind, _ = self.processes.get(p.pid, (name, _kind(p, procs[0].pid), 0.0))
                self.processes[p.pid] = (tree, kind, peak_kb / 1024)
            self.peak_tree_mb[name] = max(self.peak_tree_mb[name], total)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample({name: self._tree(pid) for name, pid in self.pids.items()})  # short runs


def _kind(process: psutil.Process, root: int) -> str:
    """What a process of a party's tree is: the party itself, a worker process (local
    crypto processes and Dask workers alike: LocalCluster's nannies live in the party's
    process and spawn the workers), or multiprocessing's resource tracker."""
    if process.pid == root:
        return "main"
    try:
        line = " ".join(process.cmdline())
    except psutil.Error:
        return "gone"
    return "tracker" if "resource_tracker" in line else "worker"


def peaks_by_process(sampler: RssSampler) -> dict[str, float]:
    """Peak RSS (MB) per process, named by party: ``brand``, ``brand-worker-1``,
    ``partner``, ``partner-worker-2`` ..."""
    return {label: round(sampler.processes[pid][2], 1) for pid, label in _labels(sampler)}


def cpu_by_process(sampler: RssSampler, since: dict[int, float] | None = None) -> dict[str, float]:
    """CPU seconds per process (named as ``peaks_by_process``), less what each had used
    by ``since`` (an earlier copy of ``sampler.cpu_seconds``)."""
    before = since or {}
    return {
        label: round(sampler.cpu_seconds.get(pid, 0.0) - before.get(pid, 0.0), 1)
        for pid, label in _labels(sampler)
    }


def _labels(sampler: RssSampler) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    counts: dict[str, int] = {}
    for pid, (tree, kind, _peak) in sorted(sampler.processes.items()):
        if kind in ("tracker", "gone"):
            continue
        if kind == "main":
            label = tree
        else:
            counts[f"{tree}-{kind}"] = counts.get(f"{tree}-{kind}", 0) + 1
            label = f"{tree}-{kind}-{counts[f'{tree}-{kind}']}"
        out.append((pid, label))
    return out


def _blind_random(args: tuple[bytes, int]) -> int:
    secret, count = args
    pts = np.random.default_rng(count).integers(0, 256, size=(count, 32), dtype=np.uint8)
    pts[:, 31] &= 0x7F
    blind_batch(secret, pts.tobytes(), validate=False)
    return count


def write_csv(path: Path, start: int, n: int) -> None:
    """An ``email`` column of ``user{i}@example.com`` for i in [start, start + n)."""
    with open(path, "w") as f:
        f.write("email\n")
        step = 100_000
        for lo in range(start, start + n, step):
            hi = min(start + n, lo + step)
            f.write("".join(f"user{i}@example.com\n" for i in range(lo, hi)))


def work_dir(prefix: str) -> Path:
    """A fresh temporary directory, removed when the benchmark exits.

    Data sets and node stores run to hundreds of megabytes a run.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


def measure_floor(ops: int, workers: int, chunk: int = 8192) -> float:
    """Wall seconds for ``ops`` X25519 operations over ``workers`` worker processes.

    Sustained, on every worker at once, as the protocol runs them (a short
    burst on one idle core runs faster on this VM than a long run on all).
    """
    secret = BlindingKey.generate().secret_bytes()
    # Equal shares per worker, so the time is not one worker's extra chunk.
    count = workers * max(1, round(ops / (workers * chunk)))
    parts = [(secret, ops // count + (i < ops % count)) for i in range(count)]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as ex:
        list(ex.map(_blind_random, [(secret, 16)] * workers))  # start the workers
        start = time.perf_counter()
        done = sum(ex.map(_blind_random, parts))
        elapsed = time.perf_counter() - start
    assert done == ops
    return elapsed


def measure_kkrt_floor(partner_items: int, brand_items: int) -> float:
    """Seconds, on one core, for the bulk work KKRT16 cannot avoid at these sizes.

    The AES blocks (the base-OT seeds' streams, 3 x 512 bits a bin; the code, four
    blocks per bin and per sender value; the output hash, four per value, receiver's and
    sender's) through ``cryptography`` into a reused buffer, and the three 512 x bins
    bit-matrix transposes (two at the receiver, one at the sender), chunk by chunk as the
    protocol does them. No hashing of identifiers, no I/O, no network: a floor.
    """
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from cleanroom.matching import ot_extension as ox
    from cleanroom.matching.kkrt import CHUNK_BINS

    bins = ox.bin_count(partner_items)
    values = ox.HASHES * brand_items
    blocks = 16 * bins + 4 * values + 4 * (partner_items + values)
    step = 1 << 16
    data = np.zeros(step * 16, dtype=np.uint8)
    out = np.empty(step * 16 + 16, dtype=np.uint8)
    chunk = np.random.default_rng(0).integers(0, 256, (ox.WIDTH, CHUNK_BINS // 8), np.uint8)
    start = time.perf_counter()
    encryptor = Cipher(algorithms.AES(bytes(16)), modes.ECB()).encryptor()
    for lo in range(0, blocks, step):
        n = min(step, blocks - lo)
        encryptor.update_into(data[: 16 * n].data, out.data)
    for _ in range(3):
        for _ in range(-(-bins // CHUNK_BINS)):
            ox.transpose(chunk)
    return time.perf_counter() - start


def high_water_kb(pid: int) -> int:
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
