"""SecretFlow RR22 PSI on two CSV files, as a yardstick for bench/psi.py.

    python bench/secretflow.py --n 100000

What is measured: SecretFlow's two-party RR22 PSI (``spu.psi.psi_execute``
with ``PROTOCOL_RR22``, its default fast mode, semi-honest), the brand as
rank 0 holding ``brand_csv`` and the partner as rank 1 holding
``partner_csv``, each in its own process, linked over loopback with brpc.
The partner is the receiver and alone learns the intersection, which it
writes as a CSV, as in the clean room's MATCH protocol. The number reported
is the wall time from launching the two processes until both have exited
successfully: it includes the interpreters' start and spu's import, spu's
own CSV reading, key checks and sorting, the protocol and the result file.
The row count of the result file is checked against ``expected``.

spu is never a dependency of the project: it is installed with pip (which
picks the version, e.g. spu 0.9.5 for Python 3.11; spu pins ``numpy<2``)
into a virtual environment of its own, made from the interpreter running
this file, under ``$CLEANROOM_BENCH_CACHE/spu-venv`` (default
``~/.cache/cleanroom-bench/spu-venv``), and reused on later runs. Creating
it is not timed. When it cannot be made or the run fails, the result says
why in ``secretflow_error`` and carries no time.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Written into the work directory and run by the venv's python, once per party.
PARTY_SCRIPT = r"""
import json
import os
import sys
import time

ERROR_MARK = "secretflow party error:"


def run(cfg):
    started = time.perf_counter()
    import spu.libspu.link as link
    import spu.psi as psi

    imported = time.perf_counter()
    desc = link.Desc()
    desc.id = cfg["link_id"]
    desc.recv_timeout_ms = cfg["recv_timeout_ms"]
    desc.connect_retry_times = cfg["connect_retry_times"]
    desc.connect_retry_interval_ms = cfg["connect_retry_interval_ms"]
    # brpc's own retry backoff (1 s by default) would otherwise stall whichever
    # party tries to reach its peer before the peer is listening.
    retry = desc.retry_opts
    retry.retry_interval_ms = cfg["retry_interval_ms"]
    desc.retry_opts = retry
    for rank, port in enumerate(cfg["ports"]):
        desc.add_party(f"party{rank}", f"127.0.0.1:{port}")
    lctx = link.create_brpc(desc, cfg["rank"])

    rr22_params = getattr(psi, "Rr22Rarams", None) or getattr(psi, "Rr22Params")
    config = psi.PsiExecuteConfig(
        protocol_conf=psi.PsiProtocolConfig(
            protocol=psi.PsiProtocol.PROTOCOL_RR22,
            receiver_rank=cfg["receiver_rank"],
            broadcast_result=False,
            rr22_params=rr22_params(low_comm_mode=False),
        ),
        input_params=psi.InputParams(
            type=psi.SourceType.SOURCE_TYPE_FILE_CSV,
            path=cfg["input"],
            selected_keys=[cfg["column"]],
            # The benchmark's files hold each key once; telling spu so is its fastest
            # correct setting (it skips its duplicate handling), the fairest yardstick.
            keys_unique=True,
        ),
        output_params=psi.OutputParams(
            type=psi.SourceType.SOURCE_TYPE_FILE_CSV,
            path=cfg["output"],
        ),
    )
    report = psi.psi_execute(config, lctx)
    lctx.stop_link()
    summary = {
        "rank": cfg["rank"],
        "import_seconds": imported - started,
        "psi_seconds": time.perf_counter() - imported,
        "original_count": report.original_count,
        "intersection_count": report.intersection_count,
    }
    print(json.dumps(summary), flush=True)


try:
    run(json.loads(sys.argv[1]))
except BaseException as e:
    # spu's messages carry native stack traces: keep only the words.
    words = [
        line.strip()
        for line in str(e).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
        and line.strip().lower() not in ("stacktrace:", "what:")
    ]
    line = f"{ERROR_MARK} {type(e).__name__}: {' '.join(words)}\n"
    os.write(2, line.encode())  # one write: spu's threads also write to stderr
    raise
"""

BRAND_RANK, PARTNER_RANK = 0, 1
TAIL_LINES = 15
ERROR_MARK = "secretflow party error:"
# spu writes a perfetto trace to /tmp/psi_<random>.trace whatever TMPDIR says,
# and logs its name; the runner removes it.
TRACE_LOG = re.compile(rb"Trace has been written to (/tmp/psi_[A-Za-z0-9_-]+\.trace)\.")


def cache_dir() -> Path:
    """Where the spu virtual environment lives."""
    root = os.environ.get("CLEANROOM_BENCH_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "cleanroom-bench"
    return base / "spu-venv"


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def _run(cmd: list[str], timeout: float) -> tuple[int, str]:
    """Runs ``cmd``; returns its exit code (-1 on timeout) and its output."""
    try:
        done = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"") + (e.stderr or b"")
        text = out.decode(errors="replace") if isinstance(out, bytes) else out
        return -1, f"{text}\ntimed out after {timeout:.0f}s: {' '.join(cmd)}"
    return done.returncode, done.stdout + done.stderr


def _probe(python: Path, timeout: float) -> tuple[str | None, str | None]:
    """The spu version importable by ``python``, or the reason it is not."""
    code, out = _run(
        [
            str(python),
            "-c",
            "import spu.libspu.link, spu.psi; from spu.version import __version__; "
            "print(__version__)",
        ],
        timeout,
    )
    if code != 0:
        return None, _tail(out)
    return out.strip().splitlines()[-1], None


def ensure_venv(timeout: float = 1800) -> tuple[Path | None, str | None, str | None]:
    """Makes (once) and checks the spu venv.

    Returns the venv's python, spu's version and, when it is unusable, why.
    """
    venv = cache_dir()
    marker = venv / "cleanroom-spu.json"
    # A venv made from a venv's python is based on the base interpreter anyway.
    interpreter = {"base_prefix": sys.base_prefix, "version": sys.version}
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time
        python = _venv_python(venv)
        if marker.exists():
            try:
                recorded = json.loads(marker.read_text())
            except (OSError, ValueError):
                recorded = {}
            if recorded.get("interpreter") == interpreter:
                version, error = _probe(python, timeout)
                if version:
                    return python, version, None
        # Missing, half-made, or made by another Python: start afresh.
        shutil.rmtree(venv, ignore_errors=True)
        code, out = _run([sys.executable, "-m", "venv", str(venv)], timeout)
        if code != 0:
            return None, None, f"python -m venv failed:\n{_tail(out)}"
        code, out = _run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "spu",
            ],
            timeout,
        )
        if code != 0:
            shutil.rmtree(venv, ignore_errors=True)
            return None, None, f"pip install spu failed:\n{_tail(out)}"
        version, error = _probe(python, timeout)
        if not version:
            return None, None, f"spu installed but does not import:\n{error}"
        marker.write_text(json.dumps({"interpreter": interpreter, "spu": version}))
        return python, version, None


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all held open while being picked)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _party_error(err_log: Path, out_log: Path) -> str:
    """The party's own error line, else the last lines it wrote."""
    try:
        err = err_log.read_text(errors="replace").splitlines()
        out = out_log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    marked = [line[line.index(ERROR_MARK) :] for line in err if ERROR_MARK in line]
    if marked:
        return "\n".join(marked)
    # Native stack frames ("#3 psi::...") and perfetto's notes hide the messages.
    kept = [line for line in err if not line.startswith("#") and "perfetto.cc" not in line]
    return _tail("\n".join(kept or out), 5)


def _remove_trace(log: Path) -> None:
    try:
        found = TRACE_LOG.findall(log.read_bytes())
    except OSError:
        return
    for name in found:
        Path(name.decode()).unlink(missing_ok=True)


def _data_rows(path: Path) -> int:
    """Lines after the header; a last line without a newline counts too."""
    rows, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            rows += chunk.count(b"\n")
            last = chunk[-1:]
    if last != b"\n":
        rows += 1
    return max(rows - 1, 0)


def run_rr22(
    brand_csv: Path,
    partner_csv: Path,
    expected: int,
    work: Path,
    *,
    column: str = "email",
    timeout: float = 1800,
) -> dict[str, object]:
    """Returns {"secretflow_rr22_seconds": float | None, "secretflow_spu_version": str | None, "secretflow_error": str | None}."""  # noqa: E501
    result: dict[str, object] = {
        "secretflow_rr22_seconds": None,
        "secretflow_spu_version": None,
        "secretflow_error": None,
    }
    python, version, error = ensure_venv(timeout)
    result["secretflow_spu_version"] = version
    if python is None:
        result["secretflow_error"] = error
        return result

    work = Path(work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    script = work / "secretflow_party.py"
    script.write_text(PARTY_SCRIPT)
    ports = _free_ports(2)
    inputs = {BRAND_RANK: Path(brand_csv).resolve(), PARTNER_RANK: Path(partner_csv).resolve()}
    names = {BRAND_RANK: "brand", PARTNER_RANK: "partner"}
    outputs = {rank: work / f"secretflow_rr22_{names[rank]}.csv" for rank in names}
    for path in outputs.values():
        path.unlink(missing_ok=True)

    procs: dict[int, subprocess.Popen[bytes]] = {}
    logs: dict[int, tuple[Path, Path]] = {}
    failure: str | None = None
    start = time.perf_counter()
    try:
        for rank in (BRAND_RANK, PARTNER_RANK):
            cfg = {
                "link_id": f"cleanroom-rr22-{os.getpid()}-{ports[0]}",
                "ports": ports,
                "rank": rank,
                "receiver_rank": PARTNER_RANK,
                "input": str(inputs[rank]),
                "output": str(outputs[rank]),
                "column": column,
                "recv_timeout_ms": int(timeout * 1000),
                "connect_retry_times": 600,
                "connect_retry_interval_ms": 100,
                "retry_interval_ms": 100,
            }
            out_log = work / f"secretflow_{names[rank]}.stdout"
            err_log = work / f"secretflow_{names[rank]}.stderr"
            logs[rank] = (out_log, err_log)
            scratch = work / f"secretflow_tmp_{names[rank]}"  # spu's and sort's spill files
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir()
            env = {**os.environ, "TMPDIR": str(scratch)}
            with open(out_log, "wb") as out, open(err_log, "wb") as err:
                procs[rank] = subprocess.Popen(
                    [str(python), str(script), json.dumps(cfg)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    cwd=work,
                    env=env,
                    start_new_session=True,  # a group of its own, killed whole
                )
        deadline = start + timeout
        while failure is None:
            codes = {rank: proc.poll() for rank, proc in procs.items()}
            if all(code == 0 for code in codes.values()):
                break
            failed = [rank for rank, code in codes.items() if code not in (None, 0)]
            if failed:
                rank = failed[0]
                failure = f"{names[rank]} (rank {rank}) exited with code {codes[rank]}"
            elif time.perf_counter() > deadline:
                failure = f"timed out after {timeout:.0f}s"
            else:
                time.sleep(0.005)
        elapsed = time.perf_counter() - start
    finally:
        for proc in procs.values():
            _kill(proc)
        for out_log, _ in logs.values():
            _remove_trace(out_log)
        for rank in procs:
            shutil.rmtree(work / f"secretflow_tmp_{names[rank]}", ignore_errors=True)

    if failure is not None:
        parts = [failure]
        for rank, (out_log, err_log) in logs.items():
            said = _party_error(err_log, out_log)
            if said:
                parts.append(f"{names[rank]} (rank {rank}): {said}")
        result["secretflow_error"] = "\n".join(parts)
        return result

    receiver_out = outputs[PARTNER_RANK]
    if not receiver_out.exists():
        result["secretflow_error"] = f"the receiver wrote no result file {receiver_out}"
        return result
    rows = _data_rows(receiver_out)
    if rows != expected:
        result["secretflow_error"] = (
            f"the intersection file {receiver_out} has {rows} rows, expected {expected}"
        )
        return result
    result["secretflow_rr22_seconds"] = round(elapsed, 3)
    return result


def main() -> int:
    from common import write_csv  # the project's own helpers (numpy, cleanroom)

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    n = args.n
    work = Path(tempfile.mkdtemp(prefix="cleanroom-secretflow-"))
    try:
        brand_csv, partner_csv = work / "brand.csv", work / "partner.csv"
        write_csv(brand_csv, 0, n)
        write_csv(partner_csv, n // 2, n)
        result = run_rr22(brand_csv, partner_csv, n - n // 2, work, timeout=args.timeout)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"bench": "secretflow_rr22", "n": n, **result}))
    return 0 if result["secretflow_error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
