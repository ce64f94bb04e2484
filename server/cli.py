"""``python -m server start|stop|status|run|drain``: a supervised tritonserver for ``make serve`` / ``make stop``.

``run`` is the supervisor in the foreground (the container's entrypoint): it starts tritonserver,
restarts it when a model's process dies or the engine stalls (:mod:`server.supervisor`), serves
``/livez`` and ``/readyz`` on ``--health-port``, and stops everything on SIGTERM/SIGINT. ``start``
runs ``run`` in the background and waits until ``/readyz`` says ready. ``drain`` waits until the
engine has no request in flight (the Kubernetes pod's preStop hook; :func:`server.supervisor.wait_for_drain`).
A started server is recorded in the work dir
(default ``.work/triton`` under the project root, or ``$MUSICGEN_TRITON_WORK_DIR``, or ``--work-dir``)::

    tritonserver.pid    the supervisor's pid, one line
    tritonserver.json   pid, shm prefix, repository, ports, endpoints, log paths, command
    tritonserver.log    the server's log (the previous one is kept as tritonserver.log.1)
    supervisor.log      the supervisor's own log: restarts and why

Exit codes: 0 success; 1 failure (server did not come up, another server is running with a
different configuration, could not stop); 2 usage error (bad arguments, missing repository);
3 ``status``: not running; 4 ``drain``: requests still in flight at its timeout; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import psutil

from .supervisor import DEFAULT_HEALTH_PORT, http_get, wait_for_drain
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
    new_shm_prefix,
    pid_alive,
    terminate_process,
)

log = logging.getLogger("server")
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_STILL_BUSY, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
PID_FILE = "tritonserver.pid"
STATE_FILE = "tritonserver.json"
LOG_FILE = "tritonserver.log"
SUPERVISOR_LOG = "supervisor.log"


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
    """The recorded pid is alive AND still our supervisor (not a recycled pid)."""
    pid = state["pid"]
    if not pid_alive(pid):
        return False
    try:
        cmdline = psutil.Process(pid).cmdline()
    except psutil.Error:
        cmdline = []
    if not cmdline:  # unreadable process entry: trust the pid
        return True
    prefix = state.get("shm_prefix")
    return "server" in cmdline and "run" in cmdline and (not prefix or f"--shm-prefix={prefix}" in cmdline)


def _print_endpoints(state: dict, out=sys.stdout) -> None:
    ep = state.get("endpoints", {})
    for label, key in (("HTTP", "http"), ("gRPC", "grpc"), ("metrics", "metrics"), ("health", "health")):
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
            same = state.get("repository") == str(repository) and state.get("ports") == {
                "http": args.http_port,
                "grpc": args.grpc_port,
                "metrics": args.metrics_port,
                "health": args.health_port,
            }
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

        log_path, sup_log = work_dir / LOG_FILE, work_dir / SUPERVISOR_LOG
        _rotate_log(log_path)
        _rotate_log(sup_log)
        prefix, t0 = new_shm_prefix(), time.monotonic()
        command = [
            sys.executable,
            "-m",
            "server",
            "run",
            f"--work-dir={work_dir}",
            f"--shm-prefix={prefix}",
            *_run_args(args),
            "--",
            *_extra_args(args),
        ]
        with open(sup_log, "ab") as out:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        host = client_host(args.address)
        state = {
            "pid": proc.pid,
            "shm_prefix": prefix,
            "repository": str(repository),
            "address": args.address,
            "ports": {
                "http": args.http_port,
                "grpc": args.grpc_port,
                "metrics": args.metrics_port,
                "health": args.health_port,
            },
            "endpoints": {
                "http": f"http://{host}:{args.http_port}",
                "grpc": f"{host}:{args.grpc_port}",
                "metrics": f"http://{host}:{args.metrics_port}/metrics",
                "health": f"http://{host}:{args.health_port}",
            },
            "log": str(log_path),
            "supervisor_log": str(sup_log),
            "exit_timeout": args.exit_timeout,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": command,
        }
        # recorded before waiting (and the lock released): `stop`/`status` work while models load
        write_state(work_dir, state)
    print(f"starting tritonserver (supervisor pid {proc.pid}) on {repository} ...", flush=True)
    ready_url = f"{state['endpoints']['health']}/readyz"
    try:
        while http_status(ready_url, timeout=2.0) != 200:
            if proc.poll() is not None:
                _clear_state_of(work_dir, proc.pid)
                _err(sup_log.read_text(errors="replace").strip() or f"error: the supervisor exited ({proc.returncode})")
                return EXIT_FAIL
            if time.monotonic() - t0 > args.timeout + 30:
                terminate_process(proc.pid, timeout=10, poll=lambda: proc.poll() is None)
                _clear_state_of(work_dir, proc.pid)
                _err(f"error: not ready after {args.timeout:g} s (stopped it); see {log_path} and {sup_log}")
                return EXIT_FAIL
            time.sleep(0.2)
    except KeyboardInterrupt:
        terminate_process(proc.pid, timeout=10, poll=lambda: proc.poll() is None)
        _clear_state_of(work_dir, proc.pid)
        _err("interrupted: stopped tritonserver")
        return EXIT_INTERRUPTED
    print(f"tritonserver is ready (supervisor pid {proc.pid}, {time.monotonic() - t0:.1f} s)")
    _print_endpoints(state)
    print("stop it with: python -m server stop" + (f" --work-dir {work_dir}" if work_dir != default_work_dir() else ""))
    return EXIT_OK


def _run_args(args: argparse.Namespace) -> list[str]:
    """The options of `start` that `run` takes as they are."""
    out = [
        f"--repository={Path(args.repository).expanduser().resolve()}",
        f"--address={args.address}",
        f"--timeout={args.timeout}",
        f"--exit-timeout={args.exit_timeout}",
        f"--stall-seconds={args.stall_seconds}",
    ]
    out += [
        f"--{n.replace('_', '-')}={getattr(args, n)}" for n in ("http_port", "grpc_port", "metrics_port", "health_port")
    ]
    return out


def cmd_run(args: argparse.Namespace, work_dir: Path) -> int:
    """The supervisor in the foreground, until SIGTERM/SIGINT."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s supervisor %(levelname)s %(message)s", stream=sys.stdout
    )
    repository = Path(args.repository).expanduser().resolve()
    if not repository.is_dir():
        _err(f"error: model repository {repository} does not exist or is not a directory")
        return EXIT_USAGE

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    server = TritonServer(
        repository,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        address=args.address,
        work_dir=work_dir,
        log_path=args.log_file or work_dir / LOG_FILE,
        extra_args=_extra_args(args),
        ready_timeout=args.timeout,
        exit_timeout=args.exit_timeout,
        shm_prefix=args.shm_prefix,
        binary=args.tritonserver,
        supervisor_options={"stall_seconds": args.stall_seconds},
    )
    try:
        server.start()
        log.info("tritonserver ready (pid %s); health on %s/readyz", server.pid, server.health_url)
        while True:
            time.sleep(3600)
    except ServerStartError as exc:
        _err(f"error: {exc}")
        return EXIT_FAIL
    except KeyboardInterrupt:
        log.info("stopping tritonserver")
        return EXIT_OK
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop at a time
        server.stop()


def _extra_args(args: argparse.Namespace) -> list[str]:
    extra = [f"--log-verbose={args.log_verbose}"] if getattr(args, "log_verbose", None) is not None else []
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
        print(f"stopping tritonserver (supervisor pid {pid}) ...", flush=True)
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
    ready, health = False, {}
    if running and "endpoints" in state:
        health = _readyz(state["endpoints"]["health"])
        ready = health.get("status") == "ready"
    if args.json:
        print(
            json.dumps(
                {**(state or {}), "work_dir": str(work_dir), "running": running, "ready": ready, "health": health},
                indent=2,
            )
        )
        return EXIT_OK if running else EXIT_NOT_RUNNING
    if not state:
        print(f"tritonserver is not running (no pid file in {work_dir})")
        return EXIT_NOT_RUNNING
    if not running:
        print(f"tritonserver is not running (stale pid file for pid {state['pid']} in {work_dir})")
        return EXIT_NOT_RUNNING
    how = (
        "ready"
        if ready
        else f"NOT ready ({health.get('status', 'no answer')}{': ' + health['reason'] if health.get('reason') else ''})"
    )
    print(f"tritonserver is running (supervisor pid {state['pid']}), {how}")
    _print_endpoints(state)
    return EXIT_OK


def _readyz(health_url: str) -> dict:
    """The supervisor's /readyz JSON ({} when it does not answer)."""
    status, body = http_get(f"{health_url}/readyz", 2.0)
    try:
        return json.loads(body) if status in (200, 503) else {}
    except ValueError:
        return {}


def cmd_drain(args: argparse.Namespace, work_dir: Path) -> int:
    """Wait until nothing is in flight (see :func:`server.supervisor.wait_for_drain`)."""
    seen = wait_for_drain(args.metrics, delay=args.delay, quiet=args.quiet, timeout=args.timeout)
    outcome, waited, peak = seen["outcome"], seen["waited_s"], seen["peak_in_flight"]
    if outcome == "idle":
        print(f"drained: nothing in flight for {args.quiet:g} s after {waited:g} s (peak {peak:g} in flight)")
    elif outcome == "no metrics":
        print(f"drained: the metrics at {args.metrics} do not answer (the server is gone); nothing to wait for")
    else:
        _err(f"drain: {seen['in_flight']:g} request(s) still in flight after {args.timeout:g} s; giving up")
        return EXIT_STILL_BUSY
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
        epilog="Exit codes: 0 ok, 1 failure, 2 usage error, 3 not running (status), 4 still busy (drain).",
    )
    parser.add_argument("--work-dir", default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{start,stop,status,run,drain}")

    server_opts = argparse.ArgumentParser(add_help=False)
    server_opts.add_argument(
        "--repository", "--model-repository", default="model_repository", help="model repository (default: %(default)s)"
    )
    server_opts.add_argument("--http-port", type=int, default=8000)
    server_opts.add_argument("--grpc-port", type=int, default=8001)
    server_opts.add_argument("--metrics-port", type=int, default=8002)
    server_opts.add_argument(
        "--health-port",
        type=int,
        default=DEFAULT_HEALTH_PORT,
        help="the supervisor's /livez and /readyz (default: %(default)s)",
    )
    server_opts.add_argument("--address", default=LOOPBACK, help="address to bind (default: %(default)s)")
    server_opts.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for readiness (default: %(default)s)"
    )
    server_opts.add_argument(
        "--exit-timeout",
        type=int,
        default=15,
        metavar="S",
        help="tritonserver --exit-timeout-secs: on stop, how long in-flight requests and open HTTP "
        "connections may delay the exit (default: %(default)s)",
    )
    server_opts.add_argument(
        "--stall-seconds",
        type=float,
        default=30.0,
        metavar="S",
        help="restart when the LM engine made no progress for this long (default: %(default)s)",
    )

    start = sub.add_parser(
        "start",
        parents=[common, server_opts],
        help="start the supervised tritonserver in the background and wait until it is ready",
        description="Start the supervised tritonserver in the background and wait until it is ready. "
        "Arguments after `--` are passed to tritonserver unchanged.",
    )
    start.add_argument("--log-verbose", type=int, default=None, metavar="N", help="tritonserver --log-verbose level")

    run = sub.add_parser(
        "run",
        parents=[common, server_opts],
        help="the supervisor in the foreground (container entrypoint); stops on SIGTERM/SIGINT",
        description="Run tritonserver under the supervisor in the foreground. "
        "Arguments after `--` are passed to tritonserver unchanged.",
    )
    run.add_argument(
        "--tritonserver",
        default=None,
        metavar="PATH",
        help="a tritonserver binary with its own backends (default: the nvidia-pytriton wheel's)",
    )
    run.add_argument("--log-file", default=None, help="tritonserver's log (default: <work dir>/tritonserver.log)")
    run.add_argument("--shm-prefix", default=None, help=argparse.SUPPRESS)

    stop = sub.add_parser("stop", parents=[common], help="stop the server recorded in the pid file")
    stop.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds between SIGTERM and SIGKILL (default: the server's exit timeout + 10)",
    )

    drain = sub.add_parser(
        "drain",
        help="wait until the engine has no request in flight (Kubernetes preStop; exit 4 at the timeout)",
        description="Sleep --delay s, then wait until the engine's in-flight gauge has read 0 for --quiet s "
        "in a row, at most --timeout s. Ends at once when the metrics do not answer (server gone).",
    )
    drain.add_argument(
        "--metrics",
        default=f"http://{LOOPBACK}:8002/metrics",
        metavar="URL",
        help="the server's metrics URL (default: %(default)s)",
    )
    drain.add_argument(
        "--delay", type=float, default=20.0, help="seconds before watching: endpoint removal (default: %(default)s)"
    )
    drain.add_argument(
        "--quiet",
        type=float,
        default=10.0,
        help="seconds with nothing in flight that count as idle (default: %(default)s)",
    )
    drain.add_argument(
        "--timeout", type=float, default=600.0, help="longest wait for in-flight requests (default: %(default)s)"
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
    if triton_args and args.command not in ("start", "run"):
        build_parser().error("arguments after `--` are only accepted by `start` and `run`")
    args.triton_args = triton_args
    for name in ("http_port", "grpc_port", "metrics_port", "health_port"):
        port = getattr(args, name, None)
        if port is not None and not 0 < port < 65536:
            build_parser().error(f"--{name.replace('_', '-')} must be in 1..65535 (got {port})")
    work_dir = Path(args.work_dir).expanduser().resolve() if args.work_dir else default_work_dir()
    if args.command == "drain" and min(args.delay, args.quiet, args.timeout) < 0:
        build_parser().error("--delay, --quiet and --timeout must be >= 0")
    handler = {"start": cmd_start, "stop": cmd_stop, "status": cmd_status, "run": cmd_run, "drain": cmd_drain}
    handler = handler[args.command]
    try:
        return handler(args, work_dir)
    except ServerError as exc:
        _err(f"error: {exc}")
        return EXIT_FAIL
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
