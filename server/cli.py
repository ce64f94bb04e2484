"""``python -m server start|stop|status``: a background tritonserver for ``make serve`` / ``make stop``.

The server started by ``start`` is recorded in the work dir (default ``.work/triton`` under the
project root, or ``$MUSICGEN_TRITON_WORK_DIR``, or ``--work-dir``)::

    tritonserver.pid    the pid, one line
    tritonserver.json   pid, shm prefix, repository, ports, endpoints, log path, command
    tritonserver.log    the server's log (the previous one is kept as tritonserver.log.1)

Exit codes: 0 success; 1 failure (server did not come up, another server is running with a
different configuration, could not stop); 2 usage error (bad arguments, missing repository);
3 ``status``: not running; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from .triton import (
    LOOPBACK,
    ServerError,
    ServerStartError,
    TritonServer,
    _file_lock,
    cleanup_shm,
    client_host,
    default_work_dir,
    http_status,
    pid_alive,
    process_cmdline,
    terminate_process,
)

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
PID_FILE = "tritonserver.pid"
STATE_FILE = "tritonserver.json"
LOG_FILE = "tritonserver.log"


# ---- state files ------------------------------------------------------------------------------


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def read_state(work_dir: Path) -> dict | None:
    """The recorded server (``pid`` always present), or None if there is no pid file."""
    try:
        pid = int((work_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    state: dict = {}
    try:
        state = json.loads((work_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        pass
    if state.get("pid") != pid:  # missing or out of date JSON: trust the pid file
        state = {"pid": pid}
    return state


def write_state(work_dir: Path, state: dict) -> None:
    work_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(work_dir / STATE_FILE, json.dumps(state, indent=2) + "\n")
    _write_atomic(work_dir / PID_FILE, f"{state['pid']}\n")


def _clear_state_of(work_dir: Path, pid: int) -> None:
    """Remove the state files if they still describe ``pid``."""
    with _file_lock(work_dir / ".cli.lock"):
        state = read_state(work_dir)
        if state and state["pid"] == pid:
            clear_state(work_dir)


def clear_state(work_dir: Path) -> None:
    for name in (PID_FILE, STATE_FILE):
        (work_dir / name).unlink(missing_ok=True)


def state_is_running(state: dict) -> bool:
    """The recorded pid is alive AND still our tritonserver (not a recycled pid)."""
    pid = state["pid"]
    if not pid_alive(pid):
        return False
    cmdline = process_cmdline(pid)
    if not cmdline:  # unreadable /proc entry: trust the pid
        return True
    if not cmdline[0].endswith("tritonserver"):
        return False
    prefix = state.get("shm_prefix")
    return not prefix or any(a.endswith(f"shm-region-prefix-name={prefix}") for a in cmdline)


def _print_endpoints(state: dict, out=sys.stdout) -> None:
    ep = state.get("endpoints", {})
    for label, key in (("HTTP", "http"), ("gRPC", "grpc"), ("metrics", "metrics")):
        if key in ep:
            print(f"  {label + ':':9}{ep[key]}", file=out)
    if state.get("log"):
        print(f"  {'log:':9}{state['log']}", file=out)
    if state.get("repository"):
        print(f"  {'models:':9}{state['repository']}", file=out)


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


def _rotate_log(log: Path) -> None:
    if log.exists():
        log.replace(log.with_name(log.name + ".1"))


# ---- commands ---------------------------------------------------------------------------------


def cmd_start(args: argparse.Namespace, work_dir: Path) -> int:
    repository = Path(args.repository).expanduser().resolve()
    if not repository.is_dir():
        _err(f"error: model repository {repository} does not exist or is not a directory")
        return EXIT_USAGE
    with _file_lock(work_dir / ".cli.lock"):
        state = read_state(work_dir)
        if state and state_is_running(state):
            same = (
                state.get("repository") == str(repository)
                and state.get("ports") == {"http": args.http_port, "grpc": args.grpc_port, "metrics": args.metrics_port}
            )
            if same:
                print(f"tritonserver is already running (pid {state['pid']}) with this repository and these ports:")
                _print_endpoints(state)
                return EXIT_OK
            _err(f"error: another tritonserver is already running from {work_dir} (pid {state['pid']}):")
            _print_endpoints(state, out=sys.stderr)
            _err("stop it first with `python -m server stop` (or use another --work-dir)")
            return EXIT_FAIL
        if state:
            _cleanup_stale(work_dir, state, quiet=False)

        log_path = work_dir / LOG_FILE
        _rotate_log(log_path)
        server = TritonServer(
            repository,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            address=args.address,
            work_dir=work_dir,
            log_path=log_path,
            extra_args=_extra_args(args),
            ready_timeout=args.timeout,
            exit_timeout=args.exit_timeout,
            detach=True,
        )
        t0 = time.monotonic()
        try:
            server.start(wait=False)
        except ServerStartError as exc:
            _err(f"error: {exc}")
            return EXIT_FAIL
        state = {
            "pid": server.pid,
            "shm_prefix": server.shm_prefix,
            "repository": str(repository),
            "address": args.address,
            "ports": {"http": server.http_port, "grpc": server.grpc_port, "metrics": server.metrics_port},
            "endpoints": server.endpoints(),
            "log": str(log_path),
            "exit_timeout": server.exit_timeout,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": server.command,
        }
        # recorded before waiting (and the lock released): `stop`/`status` work while models load
        write_state(work_dir, state)
    print(f"starting tritonserver (pid {server.pid}) on {repository} ...", flush=True)
    try:
        server.wait_until_ready(args.timeout)
    except ServerStartError as exc:
        _clear_state_of(work_dir, server.pid)
        _err(f"error: {exc}")
        return EXIT_FAIL
    except KeyboardInterrupt:
        server.stop(timeout=10)
        _clear_state_of(work_dir, server.pid)
        _err("interrupted: stopped tritonserver")
        return EXIT_INTERRUPTED
    print(f"tritonserver is ready (pid {server.pid}, {time.monotonic() - t0:.1f} s)")
    _print_endpoints(state)
    print("stop it with: python -m server stop" + (f" --work-dir {work_dir}" if work_dir != default_work_dir() else ""))
    return EXIT_OK


def _extra_args(args: argparse.Namespace) -> list[str]:
    extra = []
    if args.log_verbose is not None:
        extra.append(f"--log-verbose={args.log_verbose}")
    return extra + list(args.triton_args)


def _cleanup_stale(work_dir: Path, state: dict, quiet: bool) -> None:
    if state.get("shm_prefix"):
        cleanup_shm(state["shm_prefix"])
    clear_state(work_dir)
    if not quiet:
        print(f"note: removed a stale pid file (pid {state['pid']} is not a running tritonserver)")


def cmd_stop(args: argparse.Namespace, work_dir: Path) -> int:
    if not (work_dir / PID_FILE).exists():
        print(f"no tritonserver running (no pid file in {work_dir})")
        return EXIT_OK
    with _file_lock(work_dir / ".cli.lock"):
        state = read_state(work_dir)
        if state is None:
            print(f"no tritonserver running (no pid file in {work_dir})")
            return EXIT_OK
        pid = state["pid"]
        if not state_is_running(state):
            _cleanup_stale(work_dir, state, quiet=True)
            print(f"tritonserver (pid {pid}) was not running; removed its stale pid file")
            return EXIT_OK
        timeout = args.timeout
        if timeout is None:
            timeout = (state.get("exit_timeout") or 30) + 10.0
        print(f"stopping tritonserver (pid {pid}) ...", flush=True)
        result = terminate_process(pid, timeout=timeout)
        if pid_alive(pid):
            _err(f"error: could not stop tritonserver (pid {pid})")
            return EXIT_FAIL
        removed = cleanup_shm(state["shm_prefix"]) if state.get("shm_prefix") else []
        clear_state(work_dir)
    how = "stopped" if result != "killed" else f"killed (did not exit within {timeout:g} s of SIGTERM)"
    print(f"tritonserver (pid {pid}) {how}" + (f"; removed {len(removed)} leftover shm file(s)" if removed else ""))
    return EXIT_OK


def cmd_status(args: argparse.Namespace, work_dir: Path) -> int:
    state = read_state(work_dir)
    running = bool(state) and state_is_running(state)
    ready = False
    if running and "ports" in state:
        host = client_host(state.get("address", LOOPBACK))
        ready = http_status(f"http://{host}:{state['ports']['http']}/v2/health/ready") == 200
    if args.json:
        print(json.dumps({**(state or {}), "work_dir": str(work_dir), "running": running, "ready": ready}, indent=2))
        return EXIT_OK if running else EXIT_NOT_RUNNING
    if not state:
        print(f"tritonserver is not running (no pid file in {work_dir})")
        return EXIT_NOT_RUNNING
    if not running:
        print(f"tritonserver is not running (stale pid file for pid {state['pid']} in {work_dir})")
        return EXIT_NOT_RUNNING
    print(f"tritonserver is running (pid {state['pid']}), {'ready' if ready else 'NOT ready (loading or unhealthy)'}")
    _print_endpoints(state)
    return EXIT_OK


# ---- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--work-dir",
        default=argparse.SUPPRESS,
        help="work dir for backends, pid file and log (default: $MUSICGEN_TRITON_WORK_DIR or <project>/.work/triton)",
    )
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="Run the tritonserver bundled in nvidia-pytriton in the background.",
        epilog="Exit codes: 0 ok, 1 failure, 2 usage error, 3 not running (status).",
    )
    parser.add_argument("--work-dir", default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{start,stop,status}")

    start = sub.add_parser(
        "start",
        parents=[common],
        help="start tritonserver in the background and wait until it is ready",
        description="Start tritonserver in the background and wait until it is ready. "
        "Arguments after `--` are passed to tritonserver unchanged.",
    )
    start.add_argument("--repository", default="model_repository", help="model repository (default: %(default)s)")
    start.add_argument("--http-port", type=int, default=8000)
    start.add_argument("--grpc-port", type=int, default=8001)
    start.add_argument("--metrics-port", type=int, default=8002)
    start.add_argument("--address", default=LOOPBACK, help="address to bind (default: %(default)s)")
    start.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for readiness (default: %(default)s)")
    start.add_argument(
        "--exit-timeout",
        type=int,
        default=15,
        metavar="S",
        help="tritonserver --exit-timeout-secs: on stop, how long in-flight requests and open HTTP "
        "connections may delay the exit (default: %(default)s)",
    )
    start.add_argument("--log-verbose", type=int, default=None, metavar="N", help="tritonserver --log-verbose level")

    stop = sub.add_parser("stop", parents=[common], help="stop the server recorded in the pid file")
    stop.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds between SIGTERM and SIGKILL (default: the server's exit timeout + 10)",
    )

    status = sub.add_parser("status", parents=[common], help="tell whether the server runs (exit 3 if not)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    triton_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, triton_args = argv[:i], argv[i + 1 :]
    args = build_parser().parse_args(argv)
    if triton_args and args.command != "start":
        build_parser().error("arguments after `--` are only accepted by `start`")
    args.triton_args = triton_args
    for name in ("http_port", "grpc_port", "metrics_port"):
        port = getattr(args, name, None)
        if port is not None and not 0 < port < 65536:
            build_parser().error(f"--{name.replace('_', '-')} must be in 1..65535 (got {port})")
    work_dir = Path(args.work_dir).expanduser().resolve() if args.work_dir else default_work_dir()
    handler = {"start": cmd_start, "stop": cmd_stop, "status": cmd_status}[args.command]
    try:
        return handler(args, work_dir)
    except ServerError as exc:
        _err(f"error: {exc}")
        return EXIT_FAIL
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
