"""Load benchmark: K concurrent partner clients against one brand node.

    python bench/load.py --clients 16 [--records 2000] [--workers 2] [--seed 1]
        [--mix match,overlap,attribute] [--client-workers 1]
        [--max-sessions N] [--max-partner-sessions N] [--node-arg=--some-flag=value ...]

What runs. One brand node, a real ``cleanroom serve`` process on free
localhost ports (plaintext), its data directory in a temporary directory. On
that directory, before the node starts, the benchmark creates the tenant
(``tenant create --json``) and one partner account per client
(``partner-account create NAME --json``: each client has its own token, quota
and ledger; quotas are generous and the minimum set size 1, so the limits
that bite are the concurrent ones). Once ``/healthz`` answers, the brand
uploads a synthetic audience (``audience upload``) and conversion set
(``conversions upload``) and sets aggregation threshold 0 and DP off
(``policy set``), so every attribution figure can be compared exactly.

Each client is its own process with its own data file, running the
``cleanroom`` command line's entry point (``cleanroom.client.cli.main``, what
the ``cleanroom`` script runs) on ``partner match``, ``partner overlap`` or
``partner attribute`` (cycling through ``--mix``; ``--epsilon 0`` for
attribution). It imports the CLI first, says so on a pipe and waits for a
line on stdin: the barrier. All are released together, so their sessions
really compete. From the release until the last client exits, a thread polls
``/healthz`` every ~50 ms (a new connection each time) and another samples
the RSS of the node's process tree (node and its crypto workers). No client
retries a refusal: ``--retry-seconds 0`` is passed to each partner command
that has the flag. ``--max-sessions`` and ``--max-partner-sessions`` go to
``serve`` as flags (as CLEANROOM_* variables if it lacks them, with a
warning); ``--node-arg`` adds any other ``serve`` argument. The clients and
the node share this machine's cores: the clients' own hashing and worker
start-up compete with the node.

Checks. Every completed session is compared with a plaintext computation on
the same files, by the clean room's own reference code: ``match``, the output
file's rows (the input's columns unchanged) and its ``matched``/``matched_on``
against the join on normalized identifiers in priority order
(``audiences.reference``); ``overlap``, the count; ``attribute``, the stored
report (REST ``/v1/reports/{id}``) against
``federated.attribution.reference.reference_report`` (floats to 1e-9).

The JSON line (stdout; phases go to stderr). Each client is counted exactly
once: ``sessions_ok`` (completed, correct), ``wrong_results`` (completed,
wrong: details in ``wrong``), ``sessions_refused`` (a RESOURCE_EXHAUSTED
status, the node's admission control; per code in ``refusal_codes``) or one
object in ``errors`` (any other failure, a hang past ``--client-timeout``, a
client that never reached the barrier; also a node that died, or a fatal
error of the benchmark). The exit status is non-zero when ``errors`` or
``wrong`` is not empty. ``seconds``: from the release to the last client's
exit. ``health_p50_ms``/``health_p99_ms``/``health_max_ms``: latencies of
the answered polls during the load (``health_idle_p50_ms`` just before it;
``health_failures``: polls that failed or took over 10 s).
``node_peak_rss_mb``: the peak of the node tree's summed RSS during the load
(``node_peak_process_mb``: the largest single process's high-water mark).
``job_seconds_median``: per job, completed sessions; ``refused_seconds_max``:
the slowest refusal, from release (it includes the client reading and hashing
its file). ``node_sessions``: the node's session records by protocol and
status afterwards; ``node_log``: warnings, errors and tracebacks in its log;
``node_args``: what ``serve`` got besides ports and workers;
``retry_seconds_0``: the jobs given ``--retry-seconds 0``. Setup (data, plaintext answers,
accounts, node start, uploads) is ``setup_seconds``, not part of ``seconds``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import math
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from common import BenchNode, RssSampler, free_port, work_dir

from cleanroom.audiences.identifiers import NormalizeOptions, parse_id_columns
from cleanroom.audiences.reference import row_digests
from cleanroom.audiences.synth import synthesize
from cleanroom.federated.attribution.inputs import read_spend
from cleanroom.federated.attribution.reference import reference_report
from cleanroom.federated.attribution.synth import synthesize_attribution
from cleanroom.matching.workers import default_workers

log = logging.getLogger("bench.load")
JOBS = ("match", "overlap", "attribute")
REFUSALS = frozenset({"RESOURCE_EXHAUSTED"})
CLIENT_FLAG = "--as-client"  # internal: this file re-run as one client process
REGION = "US"
OPTIONS = NormalizeOptions(default_region=REGION)
PSI_IDS = "email,phone,maid"
BRAND_CONVERSION_IDS = "email,phone"
ID_OPTIONS = ("--id-columns", PSI_IDS, "--default-region", REGION)
AUDIENCE, CONVERSIONS = "crm", "sales"
# Generous quotas and no minimum set size: the limits under test are the concurrent ones.
QUOTA = ("--sessions-per-day", "100000", "--min-partner-records", "1")
# Imported by each client before the barrier, so the release starts sessions, not imports.
CLIENT_PRELOAD = (
    "cleanroom.client.cli",
    "cleanroom.client.sdk",
    "cleanroom.client.attribution",
    "cleanroom.federated.attribution.messages",
    "cleanroom.matching.workers",
)
# Wide enough that rich never wraps the CLI's one-line error.
CLI_ENV = {"COLUMNS": "1000", "NO_COLOR": "1"}


# --------------------------------------------------------------------------- the CLI


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cleanroom.client.cli", *args]


def cli_env(token: str | None = None) -> dict[str, str]:
    env = {**os.environ, **CLI_ENV}
    if token is not None:
        env["CLEANROOM_TOKEN"] = token  # the CLI's --token variable: no token in argv
    return env


def run_cli(*args: str, token: str | None = None) -> Any:
    """Run a setup command with ``--json``; its JSON output, or a RuntimeError with its error."""
    done = subprocess.run(
        cli(*args, "--json"), capture_output=True, text=True, env=cli_env(token), check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"cleanroom {' '.join(args[:2])}: {last_error_line(done.stderr)}")
    return json.loads(done.stdout)


def run_cli_text(*args: str, token: str | None = None) -> str:
    done = subprocess.run(
        cli(*args), capture_output=True, text=True, env=cli_env(token), check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"cleanroom {' '.join(args[:2])}: {last_error_line(done.stderr)}")
    return done.stdout


def cli_options(*command: str) -> set[str]:
    """The options ``cleanroom COMMAND`` takes (what its ``--help`` lists): flags come and go
    between versions. Read from the installed CLI's own command tree, in this process."""
    import typer.main

    from cleanroom.client.cli import app

    found: Any = typer.main.get_command(app)
    for name in command:
        found = found.commands.get(name) if hasattr(found, "commands") else None
        if found is None:
            return set()
    return {opt for param in found.params for opt in (*param.opts, *param.secondary_opts)}


ERROR_LINE = re.compile(r"^\s*error:\s*(?:(?P<code>[A-Z][A-Z_]+):\s*)?(?P<message>.*)$")


def last_error_line(stderr: str) -> str:
    """The CLI's ``error: CODE: message`` line, else the last line (a traceback's)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if ERROR_LINE.match(line):
            return line
    return lines[-1] if lines else "(no output)"


def error_code(stdout: str, stderr: str) -> str | None:
    """The gRPC status name a failed command reports.

    An error object on stdout (``--json``: ``{"error": {"code": ...}}``,
    ``{"error": "CODE", ...}`` or ``{"code": ...}``) wins; otherwise the
    ``error: CODE: message`` line the CLI prints on stderr.
    """
    with contextlib.suppress(ValueError):
        data = json.loads(stdout)
        if isinstance(data, dict):
            error = data.get("error")
            if isinstance(error, dict) and isinstance(error.get("code"), str):
                return str(error["code"])
            for value in (data.get("code"), error):
                if isinstance(value, str) and re.fullmatch(r"[A-Z][A-Z_]+", value):
                    return value
    for line in reversed(stderr.splitlines()):
        found = ERROR_LINE.match(line)
        if found:
            return found.group("code")
    return None


# --------------------------------------------------------------------------- one client


def client_process(argv: list[str]) -> int:
    """A client: import the CLI, signal ready on the fd, wait for the barrier, run the CLI."""
    ready_fd, args = int(argv[0]), argv[1:]
    for module in CLIENT_PRELOAD:
        importlib.import_module(module)
    from cleanroom.client.cli import main as cleanroom_main

    os.write(ready_fd, b"r")
    os.close(ready_fd)
    if sys.stdin.readline().strip() != "go":
        return 3  # the benchmark gave up before releasing us
    sys.argv = ["cleanroom", *args]
    try:
        cleanroom_main()
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


@dataclass
class Client:
    """One partner client: its account, its own data file, its process."""

    job: str
    name: str
    token: str
    dir: Path
    data: Path
    expected: Any  # per job: matched_on labels, a count, a reference report
    args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    ready_fd: int | None = None
    ready: bool = False
    started: float = 0.0
    ended: float | None = None
    returncode: int | None = None

    def launch(self, nice: int = 0) -> None:
        read_fd, write_fd = os.pipe()
        with open(self.dir / "stdout", "wb") as out, open(self.dir / "stderr", "wb") as err:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    CLIENT_FLAG,
                    str(write_fd),
                    *self.args,
                ],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                pass_fds=(write_fd,),
                cwd=self.dir,
                env=cli_env(self.token),
                start_new_session=True,  # its own group: its crypto workers end with it
                preexec_fn=(lambda: os.nice(nice)) if nice else None,
            )
        os.close(write_fd)
        self.ready_fd = read_fd

    def release(self) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.started = time.perf_counter()
        with contextlib.suppress(OSError):
            self.process.stdin.write(b"go\n")
            self.process.stdin.close()

    def wait(self, timeout: float) -> None:
        assert self.process is not None
        try:
            self.returncode = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(self.process)
            self.returncode = None  # a hang: reported as an error
        self.ended = time.perf_counter()

    def output(self) -> tuple[str, str]:
        """What it printed: stdout, stderr."""
        out, err = self.dir / "stdout", self.dir / "stderr"
        return out.read_text(errors="replace"), err.read_text(errors="replace")


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """End a process this benchmark started, and its children (its own session)."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def await_ready(clients: Sequence[Client], timeout: float) -> None:
    """The barrier's first half: every client has imported everything (or died trying)."""
    deadline = time.monotonic() + timeout
    waiting = {c.ready_fd: c for c in clients if c.ready_fd is not None}
    while waiting:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        readable, _, _ = select.select(list(waiting), [], [], remaining)
        for fd in readable:
            client = waiting.pop(fd)
            client.ready = os.read(fd, 1) == b"r"  # b"": it exited before it was ready
            os.close(fd)
            client.ready_fd = None
    for fd, client in waiting.items():
        os.close(fd)
        client.ready_fd = None


# --------------------------------------------------------------------------- checks


def check_match(client: Client, summary: dict[str, Any]) -> str | None:
    """The output file: the input rows unchanged plus the plaintext join's labels."""
    got = pd.read_csv(summary["out"], dtype=str, keep_default_na=False)
    source = pd.read_csv(client.data, dtype=str, keep_default_na=False)
    expected: list[str] = client.expected
    if len(got) != len(source):
        return f"{len(got)} output rows for {len(source)} input rows"
    if not got[list(source.columns)].equals(source):
        return "the output's input columns differ from the input file"
    wrong = int(np.sum(got["matched_on"].to_numpy() != np.array(expected, dtype=object)))
    if wrong:
        return f"matched_on differs from the plaintext join on {wrong} rows"
    flags = ["true" if label else "false" for label in expected]
    if got["matched"].tolist() != flags:
        return "matched differs from the plaintext join"
    if summary.get("matched") != sum(1 for label in expected if label):
        return (
            f"summary says {summary.get('matched')} matched, plaintext {sum(map(bool, expected))}"
        )
    return None


def check_overlap(client: Client, summary: dict[str, Any]) -> str | None:
    if summary.get("intersection") != client.expected:
        return f"intersection {summary.get('intersection')}, plaintext {client.expected}"
    return None


def mismatch(got: Any, want: Any, where: str) -> str | None:
    """The first difference between a report and the reference (floats to 1e-9 relative:
    they went through fixed point); None when they agree."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return f"{where}: {got!r} is not an object"
        for key, value in want.items():
            found = mismatch(got.get(key), value, f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(want, list | tuple):
        if not isinstance(got, list | tuple) or len(got) != len(want):
            return f"{where}: {got!r} != {want!r}"
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            found = mismatch(a, b, f"{where}[{i}]")
            if found:
                return found
        return None
    if isinstance(want, float) and not isinstance(got, bool) and isinstance(got, int | float):
        return (
            None
            if math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-6)
            else f"{where}: {got} != {want}"
        )
    return None if got == want else f"{where}: {got!r} != {want!r}"


def check_attribute(
    client: Client, summary: dict[str, Any], fetch_report: Callable[[str], dict[str, Any]]
) -> str | None:
    report_id = summary.get("report_id")
    if not report_id:
        return "no report id"
    got = fetch_report(str(report_id))
    want: dict[str, Any] = client.expected
    if got.get("windows") != want["windows"]:
        return f"windows {got.get('windows')} != {want['windows']}"
    got_ids = [c.get("campaign_id") for c in got.get("campaigns", [])]
    want_ids = [c["campaign_id"] for c in want["campaigns"]]
    if got_ids != want_ids:
        return f"campaigns {got_ids} != {want_ids}"
    return mismatch(got["campaigns"], want["campaigns"], "campaigns")


# --------------------------------------------------------------------------- data


def split_rows(path: Path, parts: int) -> list[pd.DataFrame]:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return [frame.iloc[i::parts].reset_index(drop=True) for i in range(parts)]


def psi_data(
    work: Path, clients: int, records: int, audience_rows: int, seed: int
) -> tuple[Path, list[pd.DataFrame], list[list[str]]]:
    """One brand audience; each PSI client's own slice of partner rows and its plaintext
    answer: per row, the highest-priority identifier type found among the brand's
    identifiers of that type (what ``audiences.reference.plaintext_match`` computes,
    with the brand's digests computed once)."""
    overlap = min(0.3, audience_rows / max(1, clients * records))
    synth = synthesize(
        work / "psi",
        brand_rows=audience_rows,
        partner_rows=clients * records,
        overlap=overlap,
        seed=seed,
        default_region=REGION,
    )
    columns = parse_id_columns(PSI_IDS)
    brand = pd.read_csv(synth.brand_path, dtype=str, keep_default_na=False)
    brand_set = {
        (str(col.id_type), digest)
        for cells in row_digests(brand, columns, OPTIONS)
        for col, digest in zip(columns, cells, strict=True)
        if digest is not None
    }
    frames = split_rows(synth.partner_path, clients) if clients else []
    expected = []
    for frame in frames:
        labels = []
        for cells in row_digests(frame, columns, OPTIONS):
            hits = (
                str(col.id_type)
                for col, digest in zip(columns, cells, strict=True)
                if digest is not None and (str(col.id_type), digest) in brand_set
            )
            labels.append(next(hits, ""))
        expected.append(labels)
    return synth.brand_path, frames, expected


@dataclass
class AttributionData:
    conversions: Path
    spend: Path
    exposures: list[pd.DataFrame]
    expected: list[dict[str, Any]]
    events: int


def attribution_data(work: Path, clients: int, records: int, seed: int) -> AttributionData:
    """One brand conversion set; each attribution client's own users' exposure rows and the
    report the plaintext reference computes from them (threshold 0, DP off)."""
    users_per_client = max(50, records // 4)
    partner_users = clients * users_per_client
    customers = max(1000, partner_users // 2)
    synth = synthesize_attribution(
        work / "attribution",
        customers=customers,
        conversions=2 * customers,
        partner_users=partner_users,
        exposure_rows=clients * records,
        campaigns=3,
        seed=seed,
        days=20,
    )
    frame = pd.read_csv(synth.exposures_path, dtype=str, keep_default_na=False)
    users = frame["user_id"].unique()
    owner = dict(
        zip(np.random.default_rng(seed).permutation(users), range(len(users)), strict=True)
    )
    part = frame["user_id"].map(owner).to_numpy() % clients
    exposures = [frame[part == i].reset_index(drop=True) for i in range(clients)]
    conversions = pd.read_csv(synth.conversions_path, dtype=str, keep_default_na=False)
    spend = read_spend(synth.spend_path)
    expected = [
        reference_report(
            conversions,
            exposures_i,
            id_columns=parse_id_columns(PSI_IDS),
            options=OPTIONS,
            customer_column="customer_id",
            time_column="ts",
            value_column="value",
            spend=spend,
            threshold=0,
        ).model_dump(mode="json")
        for exposures_i in exposures
    ]
    return AttributionData(
        synth.conversions_path, synth.spend_path, exposures, expected, len(conversions)
    )


# --------------------------------------------------------------------------- the node


def start_node(
    data_dir: Path, workers: int, extra: Sequence[str], env: dict[str, str], log_path: Path
) -> tuple[BenchNode, int]:
    """``cleanroom serve`` on two free localhost ports, its log (stderr) to ``log_path``."""
    grpc_port, http_port = free_port(), free_port()
    while http_port == grpc_port:
        http_port = free_port()
    ports = ["--grpc-port", str(grpc_port), "--http-port", str(http_port)]
    with open(log_path, "wb") as sink:
        process = subprocess.Popen(
            cli("serve", "--data-dir", str(data_dir), *ports, "--workers", str(workers), *extra),
            stdout=subprocess.DEVNULL,
            stderr=sink,
            env={**os.environ, **env},
            start_new_session=True,  # its own group: kill_group reaches its workers
        )
    return BenchNode(process, f"127.0.0.1:{grpc_port}", {}), http_port


def get_json(url: str, token: str | None = None, timeout: float = 30) -> Any:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def wait_healthy(node: BenchNode, health_url: str, log_path: Path, timeout: float = 120) -> None:
    """Until ``/healthz`` answers: the node starts REST after gRPC, so both are up."""
    deadline = time.monotonic() + timeout
    while True:
        if node.process.poll() is not None:
            lines = [line.strip(" │╭╮╰╯─") for line in log_path.read_text().splitlines()]
            said = " / ".join(line for line in lines if line)[-500:]
            raise RuntimeError(f"the node exited with status {node.process.returncode}: {said}")
        try:
            get_json(health_url, timeout=2)
            return
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the node's /healthz did not answer in {timeout:.0f} s"
                ) from None
        time.sleep(0.1)  # the node is still starting: its socket is not bound yet


def stop_node(node: BenchNode) -> None:
    if node.process.poll() is not None:
        return
    try:
        node.stop()  # SIGTERM: the node stops its workers itself
    except subprocess.TimeoutExpired:
        kill_group(node.process)


def scan_log(log_path: Path) -> dict[str, Any]:
    """Warnings, errors and tracebacks in the node's log (JSON lines, or raw text)."""
    levels: Counter[str] = Counter()
    first: list[str] = []
    tracebacks = 0
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    for line in text.splitlines():
        try:
            record = json.loads(line)
            level, message = str(record.get("level", "")), str(record.get("message", line))
        except (ValueError, AttributeError):
            level, message = ("ERROR", line) if line.startswith("Traceback") else ("", line)
            tracebacks += line.startswith("Traceback")
        if level in ("WARNING", "ERROR", "CRITICAL"):
            levels[level] += 1
            if level != "WARNING" and len(first) < 5:
                first.append(message[:300])
    return {
        "warnings": levels["WARNING"],
        "errors": levels["ERROR"] + levels["CRITICAL"],
        "tracebacks": tracebacks,
        "first_errors": first,
    }


class HealthPoller:
    """GET ``/healthz`` every ``interval`` seconds (after the last answer), a new connection
    each time, as a load balancer would; latencies of the answers, and the failures."""

    def __init__(self, url: str, interval: float = 0.05, timeout: float = 10.0) -> None:
        self.url, self.interval, self.timeout = url, interval, timeout
        self.latencies_ms: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def poll_once(self) -> float | None:
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout) as response:
                response.read()
                if response.status != 200:
                    raise OSError(f"status {response.status}")
        except (OSError, ValueError) as exc:
            self.failures.append(f"{type(exc).__name__}: {exc}"[:200])
            return None
        return (time.perf_counter() - start) * 1000

    def _run(self) -> None:
        while not self._stop.is_set():
            latency = self.poll_once()
            if latency is not None:
                self.latencies_ms.append(latency)
            self._stop.wait(self.interval)

    def __enter__(self) -> HealthPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def percentile(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


# --------------------------------------------------------------------------- the run


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=16, help="concurrent partner clients")
    parser.add_argument(
        "--records", type=int, default=2000, help="partner rows (exposure rows) per client"
    )
    parser.add_argument(
        "--audience-rows",
        type=int,
        default=None,
        help="brand audience rows (default: 5000, or enough for a 30%% overlap)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--workers", type=int, default=default_workers(), help="node crypto workers"
    )
    parser.add_argument("--client-workers", type=int, default=1, help="crypto workers per client")
    parser.add_argument(
        "--client-nice",
        type=int,
        default=10,
        help="CPU niceness of the clients (they stand in for partners' own machines;"
        " 0: compete with the node as equals)",
    )
    parser.add_argument(
        "--mix",
        default=",".join(JOBS),
        help="jobs the clients cycle through, e.g. match,match,attribute",
    )
    parser.add_argument("--max-sessions", type=int, default=None, help="the node's --max-sessions")
    parser.add_argument(
        "--max-partner-sessions", type=int, default=None, help="the node's --max-partner-sessions"
    )
    parser.add_argument(
        "--node-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra `cleanroom serve` argument, e.g. --node-arg=--chunk-size=4096 (repeat)",
    )
    parser.add_argument(
        "--client-timeout", type=float, default=900, help="seconds before a client is a hang"
    )
    args = parser.parse_args(argv)
    args.mix = [job.strip() for job in args.mix.split(",") if job.strip()]
    if not args.mix or set(args.mix) - set(JOBS):
        parser.error(f"--mix takes jobs of {', '.join(JOBS)}")
    if args.clients < 1 or args.records < 1:
        parser.error("--clients and --records must be at least 1")
    return args


def node_limits(args: argparse.Namespace) -> tuple[list[str], dict[str, str], list[str]]:
    """``serve`` flags for the session limits where it has them, else CLEANROOM_* variables."""
    flags: list[str] = []
    env: dict[str, str] = {}
    warnings: list[str] = []
    for flag, value in (
        ("--max-sessions", args.max_sessions),
        ("--max-partner-sessions", args.max_partner_sessions),
    ):
        if value is None:
            continue
        if flag in cli_options("serve"):
            flags += [flag, str(value)]
        else:
            var = "CLEANROOM_" + flag.removeprefix("--").replace("-", "_").upper()
            env[var] = str(value)
            warnings.append(f"`cleanroom serve` has no {flag}: set {var} instead")
    return flags, env, warnings


def client_args(
    job: str, target: str, data: Path, spend: Path, workers: int, retry: bool
) -> list[str]:
    """The client's ``cleanroom`` command line (its token is in CLEANROOM_TOKEN)."""
    args = ["--log-format", "json", "partner", job, "--server", target, *ID_OPTIONS]
    args += ["--workers", str(workers), "--json", *(["--retry-seconds", "0"] if retry else [])]
    if job == "match":
        return [
            *args,
            "--audience",
            AUDIENCE,
            "--file",
            str(data),
            "--out",
            str(data.with_name("matched.csv")),
        ]
    if job == "overlap":
        return [*args, "--audience", AUDIENCE, "--file", str(data)]
    args += ["--conversions", CONVERSIONS, "--exposures", str(data), "--user-column", "user_id"]
    return [*args, "--spend", str(spend), "--epsilon", "0"]  # epsilon 0: no noise


def create_accounts(data_dir: Path, names: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """The tenant (``tenant create``: its admin, analyst tokens), then one partner account per
    client (``partner-account create``, two at a time: the machine's cores)."""
    create = ["tenant", "create", "load", "--data-dir", str(data_dir), *QUOTA]
    tokens: dict[str, str] = run_cli(*create)["tokens"]

    def partner(name: str) -> str:
        made = run_cli("partner-account", "create", name, "--data-dir", str(data_dir), *QUOTA)
        return str(made["token"])

    with ThreadPoolExecutor(2) as pool:
        return tokens, dict(zip(names, pool.map(partner, names), strict=True))


def classify(
    client: Client, fetch_report: Callable[[str], dict[str, Any]], timeout: float
) -> tuple[str, dict[str, Any] | None]:
    """("ok" | "wrong" | "refused:CODE" | "error", what went wrong)."""
    stdout, stderr = client.output()
    detail: dict[str, Any] = {"client": client.name, "job": client.job}
    if not client.ready:
        return "error", {**detail, "error": "not ready at the barrier: " + last_error_line(stderr)}
    if client.returncode is None:
        return "error", {**detail, "error": f"no answer in {timeout:.0f} s: killed (a hang)"}
    if client.returncode != 0:
        code = error_code(stdout, stderr)
        if code in REFUSALS:
            return f"refused:{code}", None
        detail.update(status=client.returncode, code=code, error=last_error_line(stderr)[:400])
        return "error", detail
    try:
        summary = json.loads(stdout)
        if client.job == "match":
            wrong = check_match(client, summary)
        elif client.job == "overlap":
            wrong = check_overlap(client, summary)
        else:
            wrong = check_attribute(client, summary, fetch_report)
    except Exception as exc:  # an unreadable answer is an error, not a wrong result
        return "error", {**detail, "error": f"checking its result: {type(exc).__name__}: {exc}"}
    if wrong:
        return "wrong", {**detail, "why": wrong[:400]}
    return "ok", None


@dataclass
class Setup:
    """What the run has started, filled in as it goes (so cleanup finds all of it)."""

    work: Path
    node: BenchNode | None = None
    api: str = ""
    tokens: dict[str, str] = field(default_factory=dict)
    clients: list[Client] = field(default_factory=list)

    def close(self) -> None:
        for client in self.clients:
            if client.process is not None:
                kill_group(client.process)
            if client.ready_fd is not None:
                os.close(client.ready_fd)
                client.ready_fd = None
        if self.node is not None:
            stop_node(self.node)


def prepare_data(
    args: argparse.Namespace, work: Path, names: Sequence[str], result: dict[str, Any]
) -> tuple[list[Client], Path | None, Path | None]:
    """The synthetic data: the brand's audience and conversions (None when no client needs
    them), one directory per client with its own file and expected answer (tokens and
    command lines are filled in once the accounts and the node exist)."""
    jobs = [args.mix[i % len(args.mix)] for i in range(args.clients)]
    n_psi = sum(job != "attribute" for job in jobs)
    n_attr = len(jobs) - n_psi
    audience_rows = args.audience_rows or max(5000, math.ceil(0.3 * n_psi * args.records))
    brand, psi_frames, psi_expected = psi_data(work, n_psi, args.records, audience_rows, args.seed)
    attr = attribution_data(work, n_attr, args.records, args.seed) if n_attr else None
    result.update(
        mix=dict(Counter(jobs)),
        records_per_client=args.records,
        audience_rows=audience_rows if n_psi else 0,
        conversions=attr.events if attr else 0,
    )
    psi: Iterator[tuple[pd.DataFrame, Any]] = zip(psi_frames, psi_expected, strict=True)
    attributions: Iterator[tuple[pd.DataFrame, Any]] = (
        zip(attr.exposures, attr.expected, strict=True) if attr else iter(())
    )
    clients = []
    for job, name in zip(jobs, names, strict=True):
        home = work / "clients" / name
        home.mkdir(parents=True)
        frame, expected = next(attributions if job == "attribute" else psi)
        data = home / ("exposures.csv" if job == "attribute" else "users.csv")
        frame.to_csv(data, index=False)
        if attr is not None and job == "attribute":
            (home / "spend.csv").write_bytes(attr.spend.read_bytes())
        if job == "overlap":
            expected = sum(1 for label in expected if label)  # matched rows: the overlap
        clients.append(Client(job, name, "", home, data, expected))
    return clients, brand if n_psi else None, attr.conversions if attr else None


def set_up(args: argparse.Namespace, setup: Setup, result: dict[str, Any]) -> None:
    """Accounts (on the node's data dir, before it starts), the node, the brand's uploads.

    Setup overlaps where it can on two cores: the tenant and the accounts are created while
    the data is generated; the clients import the CLI while the node starts and the brand
    uploads, so the barrier waits for little.
    """
    work, data_dir = setup.work, setup.work / "node"
    names = [f"load-{i + 1:02d}" for i in range(args.clients)]
    with ThreadPoolExecutor(1) as background:
        accounts = background.submit(create_accounts, data_dir, names)
        clients, audience, conversions = prepare_data(args, work, names, result)
        log.info("data for %d clients generated, plaintext answers computed", len(clients))
        limit_flags, limit_env, warnings = node_limits(args)
        retry = {job: "--retry-seconds" in cli_options("partner", job) for job in JOBS}
        setup.tokens, partner_tokens = accounts.result()
    node_args = [*limit_flags, *args.node_arg]
    jobs = sorted({c.job for c in clients})
    result.update(node_args=node_args, retry_seconds_0=[job for job in jobs if retry[job]])
    if warnings:
        result["warnings"] = warnings
    log.info("tenant and %d partner accounts created", len(partner_tokens))

    setup.node, http_port = start_node(
        data_dir, args.workers, node_args, limit_env, work / "node.log"
    )
    setup.api = f"http://127.0.0.1:{http_port}"
    target = setup.node.target
    for c in clients:
        c.token = partner_tokens[c.name]
        spend = c.dir / "spend.csv"
        c.args = client_args(c.job, target, c.data, spend, args.client_workers, retry[c.job])
        setup.clients.append(c)
        c.launch(args.client_nice)  # it imports the CLI, then waits at the barrier
    wait_healthy(setup.node, f"{setup.api}/healthz", work / "node.log")
    log.info("node up on %s (REST %s)", target, setup.api)
    upload_brand_data(target, setup.tokens["admin"], audience, conversions)
    log.info("brand data uploaded")


def upload_brand_data(
    target: str, admin: str, audience: Path | None, conversions: Path | None
) -> None:
    """The brand's side, over the CLI (the audience and the conversions at once): its
    audience, its conversions, its policy."""
    server = ["--server", target]
    with ThreadPoolExecutor(2) as pool:
        uploads = []
        if audience is not None:
            upload = ["audience", "upload", *server, "--name", AUDIENCE, "--file", str(audience)]
            uploads.append(pool.submit(run_cli, *upload, *ID_OPTIONS, token=admin))
        if conversions is not None:
            upload = ["conversions", "upload", *server, "--name", CONVERSIONS]
            upload += ["--file", str(conversions), "--id-columns", BRAND_CONVERSION_IDS]
            upload += ["--customer-column", "customer_id", "--time-column", "ts"]
            upload += ["--value-column", "value", "--default-region", REGION]
            uploads.append(pool.submit(run_cli, *upload, token=admin))
            # Every group reported, no noise: the report can equal the plaintext one exactly.
            policy = ["policy", "set", *server, "--aggregation-threshold", "0", "--dp", "off"]
            uploads.append(pool.submit(run_cli_text, *policy, token=admin))
        for done in uploads:
            done.result()


def run_load(
    args: argparse.Namespace, setup: Setup, result: dict[str, Any], setup_start: float
) -> None:
    """Release every client at once; poll health and sample RSS until the last one ends."""
    node, clients = setup.node, setup.clients
    assert node is not None
    health_url = f"{setup.api}/healthz"
    await_ready(clients, timeout=300)
    ready = [c for c in clients if c.ready]
    for client in clients:
        if not client.ready and client.process is not None:
            kill_group(client.process)  # still importing after minutes: an error, not load
    log.info("%d of %d clients ready at the barrier", len(ready), len(clients))
    idle = HealthPoller(health_url)
    idle_ms = [ms for ms in (idle.poll_once() for _ in range(20)) if ms is not None]
    result["setup_seconds"] = round(time.perf_counter() - setup_start, 1)
    with (
        RssSampler({"node": node.process.pid}, interval=0.25, rescan=4) as rss,
        HealthPoller(health_url) as health,
    ):
        start = time.perf_counter()
        for client in ready:
            client.release()
        # A thread per client notes when it ends; daemons, so an interrupted run exits
        # (its cleanup kills the clients) instead of waiting for them.
        waiters = [
            threading.Thread(target=c.wait, args=(args.client_timeout,), daemon=True) for c in ready
        ]
        for waiter in waiters:
            waiter.start()
        for waiter in waiters:
            waiter.join()
        seconds = time.perf_counter() - start
    log.info("all clients done in %.1f s", seconds)
    latencies = health.latencies_ms
    result.update(
        seconds=round(seconds, 2),
        health_p50_ms=percentile(latencies, 50),
        health_p99_ms=percentile(latencies, 99),
        health_max_ms=round(max(latencies), 2) if latencies else None,
        health_idle_p50_ms=percentile(idle_ms, 50),
        health_samples=len(latencies),
        health_failures=len(health.failures),
        node_peak_rss_mb=round(rss.peak_tree_mb["node"], 1),
        node_peak_process_mb=round(rss.peak_process_mb, 1),
    )
    if health.failures:
        result["health_failure_examples"] = sorted(set(health.failures))[:3]


def account(args: argparse.Namespace, setup: Setup, result: dict[str, Any]) -> None:
    """Sort every client into ok, wrong, refused or error; the node's own session records."""
    node, api, tokens = setup.node, setup.api, setup.tokens
    assert node is not None
    if node.process.poll() is not None:
        result["errors"].append({"node": f"exited with status {node.process.returncode}"})

    def fetch_report(report_id: str) -> dict[str, Any]:
        return dict(get_json(f"{api}/v1/reports/{report_id}", tokens["analyst"]))

    outcomes: Counter[str] = Counter()
    times: dict[str, list[float]] = {}  # per job, completed sessions; "refused", refusals
    for client in setup.clients:
        outcome, detail = classify(client, fetch_report, args.client_timeout)
        outcomes[outcome] += 1
        if detail is not None:
            result["wrong" if outcome == "wrong" else "errors"].append(detail)
        kind = client.job if outcome in ("ok", "wrong") else outcome.split(":")[0]
        if client.ended is not None and kind != "error":
            times.setdefault(kind, []).append(client.ended - client.started)
    refused = times.pop("refused", [])
    refusals = {k.split(":", 1)[1]: n for k, n in outcomes.items() if k.startswith("refused:")}
    result.update(
        sessions_ok=outcomes["ok"],
        sessions_refused=sum(refusals.values()),
        wrong_results=outcomes["wrong"],
        refusal_codes=refusals,
        job_seconds_median={job: round(float(np.median(t)), 2) for job, t in sorted(times.items())},
        refused_seconds_max=round(max(refused), 2) if refused else None,
    )
    if node.process.poll() is None:
        sessions = get_json(f"{api}/v1/sessions", tokens["admin"])
        statuses = Counter(f"{s['protocol']}:{s['status']}" for s in sessions)
        result["node_sessions"] = dict(sorted(statuses.items()))


def run(args: argparse.Namespace, result: dict[str, Any]) -> None:
    start = time.perf_counter()
    setup = Setup(work_dir("cleanroom-bench-load-"))
    try:
        set_up(args, setup, result)
        run_load(args, setup, result, setup_start=start)
        account(args, setup, result)
    finally:
        setup.close()
        result["node_log"] = scan_log(setup.work / "node.log")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # The run's phases go to stderr; stdout gets the one JSON line.
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(relativeCreated)9.0f ms  %(message)s"
    )
    result: dict[str, Any] = {
        "bench": "load",
        "clients": args.clients,
        "sessions_ok": None,
        "sessions_refused": None,
        "wrong_results": None,
        "health_p50_ms": None,
        "health_p99_ms": None,
        "node_peak_rss_mb": None,
        "seconds": None,
        "errors": [],
        "wrong": [],
        "client_nice": args.client_nice,
    }
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every process we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    status = 0
    try:
        run(args, result)
    except Exception as exc:
        result["errors"].append({"fatal": f"{type(exc).__name__}: {exc}"[:1000]})
    except (KeyboardInterrupt, SystemExit) as exc:
        status = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 130
        result["errors"].append({"run": "interrupted: every process it started was ended"})
    print(json.dumps(result))
    return status or (1 if result["errors"] or result["wrong"] else 0)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == CLIENT_FLAG:
        sys.exit(client_process(sys.argv[2:]))
    sys.exit(main())
