"""Run the real ``tritonserver`` binary bundled in the ``nvidia-pytriton`` wheel.

The wheel ships a genuine Triton Inference Server (2.51.0 for nvidia-pytriton 0.7.0) with the
python backend. It is not usable in place: the python backend expects its stub next to
``libtriton_python.so``, and the stub needs a shared libpython of the running version. This module

* locates the bundled binary (:func:`find_triton_install`),
* prepares a work dir with ``backends/`` and ``caches/`` and the right stub
  (:func:`prepare_work_dir`, idempotent),
* builds the environment and the command line (:func:`build_environment`, :func:`build_command`),
* runs a server as a subprocess (:class:`TritonServer`, also a context manager for tests), supervised
  by :class:`server.supervisor.Supervisor` (restarts it when a model's process dies or the engine
  stalls; ``/livez`` and ``/readyz`` on the health port),
* and cleans the ``/dev/shm`` regions a server leaves behind (:func:`cleanup_shm`).

Nothing here depends on PyTriton's Python API, and nothing reads files outside the project, the
interpreter's site-packages and the work dir. A container passes ``binary=`` (its own tritonserver,
backends in their default place) instead of the wheel's.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import errno
import fcntl
import glob
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import weakref
from pathlib import Path
from typing import Callable, Mapping, Sequence

import psutil

from musicgen_runtime import memory
from musicgen_runtime.processes import pid_alive

from .supervisor import Supervisor, http_get

log = logging.getLogger("server.triton")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORK_DIR = PROJECT_ROOT / ".work" / "triton"
WORK_DIR_ENV = "MUSICGEN_TRITON_WORK_DIR"
SHM_DIR = Path("/dev/shm")
SHM_PREFIX_BASE = "mgtriton_"
LOOPBACK = "127.0.0.1"

# Log lines that look like errors but are expected on a CPU-only host.
_HARMLESS = re.compile(
    r"CudaDriverHelper has not been initialized|pinned memory|Unable to allocate pinned|"
    r"cudaGetDeviceCount|CUDA driver|GPU metrics",
    re.IGNORECASE,
)
_ERROR_LINE = re.compile(r"^(E\d{4} |error: )")


class ServerError(RuntimeError):
    """Something went wrong while preparing, starting or stopping a server."""


class TritonNotFoundError(ServerError):
    """The nvidia-pytriton wheel (and so the tritonserver binary) is not installed."""


class ServerStartError(ServerError):
    """The server exited or did not become ready in time. The message contains the log excerpt."""

    def __init__(self, message: str, log_path: Path | None = None, returncode: int | None = None):
        super().__init__(message)
        self.log_path = log_path
        self.returncode = returncode


# --------------------------------------------------------------------------------------------
# Locating the wheel and preparing the work dir
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TritonInstall:
    """Where the nvidia-pytriton wheel put the server."""

    root: Path  # site-packages/pytriton/tritonserver
    binary: Path  # .../bin/tritonserver
    libs_dir: Path  # site-packages/nvidia_pytriton.libs
    version: str  # nvidia-pytriton distribution version

    @property
    def backends_src(self) -> Path:
        return self.root / "backends"

    @property
    def caches_src(self) -> Path:
        return self.root / "caches"

    def stub_src(self, python_version: str | None = None) -> Path:
        return self.root / "python_backend_stubs" / (python_version or _python_xy()) / "triton_python_backend_stub"


@dataclasses.dataclass(frozen=True)
class WorkDir:
    """A prepared work dir: what ``--backend-directory`` / ``--cache-directory`` point to."""

    path: Path
    install: TritonInstall

    @property
    def backend_dir(self) -> Path:
        return self.path / "backends"

    @property
    def cache_dir(self) -> Path:
        return self.path / "caches"

    @property
    def stub(self) -> Path:
        return self.backend_dir / "python" / "triton_python_backend_stub"

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"


def _python_xy() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def default_work_dir() -> Path:
    """``$MUSICGEN_TRITON_WORK_DIR`` if set, else ``<project>/.work/triton``."""
    env = os.environ.get(WORK_DIR_ENV)
    return Path(env).expanduser().resolve() if env else DEFAULT_WORK_DIR


def find_triton_install() -> TritonInstall:
    """Locate the tritonserver binary bundled in the nvidia-pytriton wheel of this interpreter."""
    spec = importlib.util.find_spec("pytriton")  # does not import pytriton
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotFoundError(
            "nvidia-pytriton is not installed in this Python environment "
            f"({sys.executable}); run `make setup` (extra 'serve': nvidia-pytriton==0.7.0)"
        )
    pkg_dir = Path(next(iter(spec.submodule_search_locations)))
    root = pkg_dir / "tritonserver"
    binary = root / "bin" / "tritonserver"
    if not binary.is_file():
        raise TritonNotFoundError(f"the nvidia-pytriton wheel has no tritonserver binary at {binary}")
    if not os.access(binary, os.X_OK):
        raise TritonNotFoundError(f"{binary} is not executable")
    try:
        version = importlib.metadata.version("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - odd installs
        version = "unknown"
    return TritonInstall(root=root, binary=binary, libs_dir=pkg_dir.parent / "nvidia_pytriton.libs", version=version)


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def prepare_work_dir(work_dir: str | os.PathLike | None = None, install: TritonInstall | None = None) -> WorkDir:
    """Copy ``backends/`` and ``caches/`` from the wheel and put the python stub in place.

    Idempotent and safe to call concurrently: a stamp file records what was copied (wheel version,
    Python X.Y, source dir); nothing is copied again while it matches and the files are present.
    """
    install = install or find_triton_install()
    wd = WorkDir(Path(work_dir).expanduser().resolve() if work_dir else default_work_dir(), install)
    stub_src = install.stub_src()
    if not stub_src.is_file():
        available = sorted(p.name for p in (install.root / "python_backend_stubs").glob("*"))
        raise TritonNotFoundError(
            f"nvidia-pytriton {install.version} has no python backend stub for Python {_python_xy()} "
            f"(available: {', '.join(available) or 'none'})"
        )
    wanted = {"nvidia-pytriton": install.version, "python": _python_xy(), "source": str(install.root)}
    stamp = wd.path / ".prepared.json"
    required = [
        wd.backend_dir / "python" / "libtriton_python.so",
        wd.backend_dir / "python" / "triton_python_backend_utils.py",
        wd.stub,
        wd.cache_dir,
    ]

    def up_to_date() -> bool:
        try:
            return json.loads(stamp.read_text()) == wanted and all(p.exists() for p in required)
        except (OSError, ValueError):
            return False

    if up_to_date() and _runtime_linked(wd):
        return wd
    with _file_lock(wd.path / ".prepare.lock"):
        if up_to_date():
            _link_runtime(wd)
            return wd
        stamp.unlink(missing_ok=True)
        for dst, src in ((wd.backend_dir, install.backends_src), (wd.cache_dir, install.caches_src)):
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub_src, wd.stub)
        wd.stub.chmod(0o755)
        _link_runtime(wd)
        tmp = stamp.with_suffix(".tmp")
        tmp.write_text(json.dumps(wanted, indent=2) + "\n")
        tmp.replace(stamp)
    return wd


def _runtime_linked(wd: WorkDir) -> bool:
    link = wd.backend_dir / "python" / "musicgen_runtime"
    return link.is_symlink() and os.readlink(link) == str(PROJECT_ROOT / "musicgen_runtime")


def _link_runtime(wd: WorkDir) -> None:
    """The stubs run an isolated interpreter (PYTHONPATH ignored) whose sys.path holds backends/python
    ahead of the venv's editable-install finder: a link there makes every model import THIS checkout's
    musicgen_runtime, not the one the venv was installed from."""
    if not _runtime_linked(wd):
        link = wd.backend_dir / "python" / "musicgen_runtime"
        link.unlink(missing_ok=True)
        link.symlink_to(PROJECT_ROOT / "musicgen_runtime")


def build_environment(
    install: TritonInstall,
    base: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment tritonserver (and the python stubs it spawns) must run with.

    * ``LD_LIBRARY_PATH``: the wheel's vendored libs (libcudart for the stub) and the LIBDIR of
      this interpreter (the stub needs a shared libpython of the same version).
    * ``PATH``: this venv's bin first, so the embedded interpreter finds the venv's packages.
    * ``GLIBC_TUNABLES``: glibc backs large mallocs (the ONNX weights) with huge pages
      (:mod:`musicgen_runtime.memory`; ``MUSICGEN_HUGEPAGE_MALLOC=0`` opts out).
    """
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR")
    ld = [str(install.libs_dir)] + ([libdir] if libdir else [])
    if env.get("LD_LIBRARY_PATH"):
        ld.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(ld)
    scripts = sysconfig.get_path("scripts") or str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([scripts] + ([env["PATH"]] if env.get("PATH") else []))
    env.setdefault("PYTHONUNBUFFERED", "1")  # model prints reach the log promptly
    if extra:
        env.update(extra)
    return memory.with_hugepage_malloc(env)


def build_command(
    work: WorkDir | None,
    model_repository: str | os.PathLike,
    *,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    shm_prefix: str,
    address: str = LOOPBACK,
    extra_args: Sequence[str] = (),
    binary: str | os.PathLike | None = None,
) -> list[str]:
    """The tritonserver command line (list form, no shell): the wheel's server with the work dir's
    backends, or ``binary``, an installation of its own (the container's: backends in place, GPU metrics)."""
    if binary:
        server = [str(binary)]
    else:
        server = [str(work.install.binary), f"--backend-directory={work.backend_dir}"]
        server += [f"--cache-directory={work.cache_dir}", "--allow-gpu-metrics=false"]
    listen = [
        f"--{kind}-{key}={value}"
        for kind, port in (("http", http_port), ("grpc", grpc_port), ("metrics", metrics_port))
        for key, value in (("address", address), ("port", port))
    ]
    return [
        *server,
        f"--model-repository={Path(model_repository).resolve()}",
        *listen,
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
        *extra_args,
    ]


# --------------------------------------------------------------------------------------------
# Ports, shared memory, processes
# --------------------------------------------------------------------------------------------


def find_free_ports(count: int = 3, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct TCP ports free on ``host`` right now (all held open while choosing)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def find_free_port(host: str = LOOPBACK) -> int:
    return find_free_ports(1, host)[0]


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """True if something is listening on (or otherwise holds) ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # like a server; ignores TIME_WAIT
        try:
            s.bind((host if host not in ("", "0.0.0.0") else "", port))
        except OSError as exc:
            return exc.errno in (errno.EADDRINUSE, errno.EACCES)
    return False


def new_shm_prefix() -> str:
    """A unique shm-region prefix. Fixed length + trailing ``_``: no prefix is a prefix of another."""
    return f"{SHM_PREFIX_BASE}{secrets.token_hex(6)}_"


def cleanup_shm(prefix: str, shm_dir: Path = SHM_DIR) -> list[Path]:
    """Remove ``/dev/shm/<prefix>*`` (leftovers of a killed server). Returns what was removed."""
    if not prefix or "/" in prefix:
        raise ValueError(f"refusing to clean shm with prefix {prefix!r}")
    removed = []
    for p in shm_dir.glob(glob.escape(prefix) + "*"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed


def terminate_process(
    pid: int, *, timeout: float = 30.0, poll: Callable[[], bool] | None = None, sig: int = signal.SIGTERM
) -> str:
    """Send ``sig`` (SIGTERM) to ``pid``, wait up to ``timeout`` s, then SIGKILL it and what is left of
    its process tree (python stubs) and the process group it leads (we start servers and supervisors
    in sessions of their own; a pid stays reserved while it names a group with members). ``poll()`` ->
    "still alive" may be given for a child of ours (so it gets reaped). Returns ``"terminated"``,
    ``"killed"`` or ``"not running"``."""
    alive = poll or (lambda: pid_alive(pid))
    try:  # the tree first: a dead process's children are re-parented, out of reach
        rest = psutil.Process(pid).children(recursive=True)
        leads_group = os.getpgid(pid) == pid
    except (psutil.NoSuchProcess, ProcessLookupError):  # gone (reaped): the group it led may live on
        rest, leads_group = [], True
    except (psutil.Error, OSError):
        rest, leads_group = [], False
    result = "not running"
    if alive():
        result = "terminated"
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if sig == signal.SIGKILL or not _wait_until(lambda: not alive(), timeout):
            result = "killed"
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_until(lambda: not alive(), 10.0)
    if leads_group:  # a server runs in a session of its own: its stubs stay in its group, even orphaned
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        _wait_until(lambda: not _group_alive(pid), 5.0)
    for proc in rest:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(rest, timeout=5)
    return result


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except OSError:
        return False
    return True


def _wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# --------------------------------------------------------------------------------------------
# Logs and HTTP probes
# --------------------------------------------------------------------------------------------


def _read_tail(path: Path, lines: int, max_bytes: int = 256 * 1024) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read().decode(errors="replace")
    except OSError:
        return []
    return data.splitlines()[-lines:] if lines > 0 else []


def log_excerpt(path: str | os.PathLike, tail_lines: int = 40, max_errors: int = 20) -> str:
    """Error lines of a tritonserver log (minus harmless CUDA noise) followed by its last lines."""
    path = Path(path)
    all_lines = _read_tail(path, 5000, max_bytes=4 * 1024 * 1024)
    errors = [ln for ln in all_lines if _ERROR_LINE.match(ln) and not _HARMLESS.search(ln)]
    parts = []
    if errors:
        parts.append("errors in the log:\n" + "\n".join("  " + e for e in errors[-max_errors:]))
    tail = all_lines[-tail_lines:]
    parts.append(f"last {len(tail)} lines of {path}:\n" + ("\n".join(tail) if tail else "  (log is empty)"))
    return "\n".join(parts)


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """HTTP status of a GET (proxies ignored: the server is local), or None if unreachable."""
    return http_get(url, timeout)[0]


def client_host(address: str) -> str:
    """The host a client on this machine uses to reach a server bound to ``address``."""
    return LOOPBACK if address in ("", "0.0.0.0", "::", "[::]") else address


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------

_LIVE_SERVERS: "weakref.WeakSet[TritonServer]" = weakref.WeakSet()


@atexit.register
def _stop_forgotten_servers() -> None:  # pragma: no cover - exercised only at interpreter exit
    for server in list(_LIVE_SERVERS):
        with contextlib.suppress(Exception):
            server.stop(timeout=10)


def _set_parent_death_signal() -> None:  # runs in the child between fork and exec
    """SIGTERM to the server when the thread that started it dies, even by SIGKILL (no atexit, no
    supervisor runs then). Only the kernel can do that: prctl(PR_SET_PDEATHSIG), which neither the
    standard library nor psutil wraps; one ctypes call is the simplest correct way."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - non-Linux
        pass


class TritonServer:
    """One tritonserver process on a model repository.

    >>> with TritonServer("model_repository") as server:     # free ports, waits until ready
    ...     client = tritonclient.http.InferenceServerClient(server.http_endpoint)

    Ports left as ``None`` are picked free (and re-picked if another process grabs one before the
    server binds it). The server runs in its own process group (its python stubs with it); unless
    ``detach`` it also gets SIGTERM if the process that started it dies (PR_SET_PDEATHSIG of the
    starting *thread*: start it from a thread that outlives it) and is stopped at interpreter exit.

    ``exit_timeout`` is passed as ``--exit-timeout-secs`` (grace period for in-flight requests and
    open HTTP connections on SIGTERM; ``None`` keeps Triton's 30 s). ``stop()`` sends SIGKILL
    ``stop_timeout`` s after SIGTERM (default: exit timeout + 10 s).

    With ``supervise`` (the default) a :class:`~server.supervisor.Supervisor` watches the server once
    it is ready, restarts it on failure, and serves ``/livez`` / ``/readyz`` on ``health_port``
    (``None``: a free port); ``supervisor_options`` go to it (``stall_seconds``, ``probe_every``, ...).
    """

    def __init__(
        self,
        model_repository: str | os.PathLike,
        *,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        address: str = LOOPBACK,
        work_dir: str | os.PathLike | None = None,
        log_path: str | os.PathLike | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        shm_prefix: str | None = None,
        ready_timeout: float = 120.0,
        exit_timeout: int | None = 5,
        stop_timeout: float | None = None,
        detach: bool = False,
        binary: str | os.PathLike | None = None,
        supervise: bool = True,
        health_port: int | None = None,
        supervisor_options: Mapping | None = None,
    ):
        self.model_repository = Path(model_repository).expanduser().resolve()
        self.address = address
        self._requested_ports = (http_port, grpc_port, metrics_port)
        self.http_port, self.grpc_port, self.metrics_port = self._pick_ports()
        self.work_dir = Path(work_dir).expanduser().resolve() if work_dir else default_work_dir()
        self.shm_prefix = shm_prefix or new_shm_prefix()
        if "," in self.shm_prefix or "/" in self.shm_prefix:
            raise ValueError("shm_prefix must not contain ',' or '/'")
        self.log_path = (
            Path(log_path).expanduser().resolve()
            if log_path
            else self.work_dir / "logs" / f"tritonserver-{self.shm_prefix.rstrip('_')}.log"
        )
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.ready_timeout = ready_timeout
        # Triton waits up to --exit-timeout-secs (its default: 30) on SIGTERM for in-flight requests
        # AND for open HTTP keep-alive connections; an explicit value in extra_args wins.
        given = [a for a in self.extra_args if a.startswith("--exit-timeout-secs")]
        if given:
            self.exit_timeout = int(given[-1].split("=", 1)[1]) if "=" in given[-1] else None
        else:
            self.exit_timeout = exit_timeout
            if exit_timeout is not None:
                self.extra_args.insert(0, f"--exit-timeout-secs={int(exit_timeout)}")
        if stop_timeout is None:
            stop_timeout = (30 if self.exit_timeout is None else self.exit_timeout) + 10.0
        self.stop_timeout = stop_timeout
        self.detach = detach
        self.binary = Path(binary) if binary else None
        self.health_port = (health_port or find_free_port(client_host(address))) if supervise else None
        self.supervisor: Supervisor | None = None
        self._supervisor_options = dict(supervisor_options or {})
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self._stopping = False
        self.returncode: int | None = None
        self._work: WorkDir | None = None

    # ---- endpoints -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return client_host(self.address)

    @property
    def http_endpoint(self) -> str:
        """``host:port`` for ``tritonclient.http.InferenceServerClient(url=...)``."""
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_endpoint(self) -> str:
        """``host:port`` for ``tritonclient.grpc.InferenceServerClient(url=...)``."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.http_endpoint}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.grpc_endpoint}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def health_url(self) -> str | None:
        """``http://host:port`` of the supervisor's ``/livez`` and ``/readyz`` (None unsupervised)."""
        return f"http://{self.host}:{self.health_port}" if self.health_port else None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def command(self) -> list[str]:
        return build_command(
            None if self.binary else self._work or prepare_work_dir(self.work_dir),
            self.model_repository,
            http_port=self.http_port,
            grpc_port=self.grpc_port,
            metrics_port=self.metrics_port,
            shm_prefix=self.shm_prefix,
            address=self.address,
            extra_args=self.extra_args,
            binary=self.binary,
        )

    def endpoints(self) -> dict[str, str]:
        eps = {"http": self.http_url, "grpc": self.grpc_endpoint, "metrics": self.metrics_url}
        if self.health_url:
            eps["health"] = self.health_url
        return eps

    # ---- lifecycle -------------------------------------------------------------------------

    def _pick_ports(self) -> tuple[int, int, int]:
        wanted = list(self._requested_ports)
        free = iter(find_free_ports(sum(p is None for p in wanted), client_host(self.address)))
        return tuple(p if p is not None else next(free) for p in wanted)  # type: ignore[return-value]

    def start(self, wait: bool = True, timeout: float | None = None) -> "TritonServer":
        """Launch the process; with ``wait`` block until ready (raises :class:`ServerStartError`)."""
        if self.is_running():
            raise ServerError(f"server already running (pid {self.pid})")
        if not self.model_repository.is_dir():
            raise ServerStartError(f"model repository {self.model_repository} is not a directory")
        self._stopping = False
        self._work = None if self.binary else prepare_work_dir(self.work_dir)
        # free ports picked here can be lost to another process; a supervised server that crashed while
        # loading (a python-backend stub that aborted) is started again, as the supervisor would
        attempts = 3 if None in self._requested_ports or self.health_port else 1
        for attempt in range(attempts):
            self._check_ports()
            self._launch()
            if not wait:
                return self
            try:
                self.wait_until_ready(timeout)
                self.start_supervisor()
                return self
            except ServerStartError as exc:
                if attempt + 1 == attempts or exc.returncode is None:
                    raise
                if self._lost_port_race():
                    self.http_port, self.grpc_port, self.metrics_port = self._pick_ports()
                elif self.health_port:
                    tail = "\n".join(_read_tail(self.log_path, 20))
                    log.warning(
                        "tritonserver exited while starting (code %s), starting it again:\n%s", exc.returncode, tail
                    )
                    cleanup_shm(self.shm_prefix)
                else:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_ports(self) -> None:
        ports = {"HTTP": self.http_port, "gRPC": self.grpc_port, "metrics": self.metrics_port}
        if self.health_port and self.supervisor is None:
            ports["health"] = self.health_port
        if len(set(ports.values())) < len(ports):
            raise ServerStartError(
                f"the {', '.join(ports)} ports must differ (got {', '.join(map(str, ports.values()))})"
            )
        busy = [f"{name} port {port}" for name, port in ports.items() if port_in_use(port, self.address)]
        if busy:
            raise ServerStartError(f"cannot start tritonserver: {', '.join(busy)} already in use on {self.address}")

    def start_supervisor(self) -> None:
        """Watch the (ready) server from now on: restarts, ``/livez``, ``/readyz`` (idempotent)."""
        if self.health_port and self.supervisor is None:
            self.supervisor = Supervisor(self, **self._supervisor_options)
            self.supervisor.start()

    def restart(self, timeout: float | None = None, reason: str = "") -> None:
        """Kill the server and its stubs at once (in-flight requests end with a connection error
        instead of hanging on a dead stub), start it again on the same ports, wait until ready."""
        if self.process is not None:
            proc = self.process
            terminate_process(proc.pid, sig=signal.SIGKILL, poll=lambda: proc.poll() is None)
            self._after_exit()
        if self._stopping:  # stop() runs on another thread: no new server behind its back
            raise ServerError("the server is being stopped")
        self.restarts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"# supervisor: restarting tritonserver ({reason or 'asked to'})\n".encode())
        self._launch()
        self.wait_until_ready(timeout, stop_on_timeout=False)

    def _lost_port_race(self) -> bool:
        return any("already in use" in ln for ln in _read_tail(self.log_path, 200))

    def _launch(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = self.command
        if self.binary:
            env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        else:
            env = build_environment(self._work.install, extra=self.extra_env)
        # a restarted server appends: the log keeps why the previous one was restarted
        if not self.restarts:
            self.log_path.write_bytes(b"")
        # append mode for every writer: a stub of a killed server that still writes as it dies must not
        # write over what came after it (the restart's reason, the next server's log)
        with open(self.log_path, "ab") as log:
            log.write(("# " + " ".join(cmd) + "\n").encode())
            log.flush()
            self.process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(self.work_dir) if self.work_dir.is_dir() else None,
                start_new_session=True,
                close_fds=True,
                preexec_fn=None if self.detach else _set_parent_death_signal,
            )
        self.returncode = None
        if not self.detach:
            _LIVE_SERVERS.add(self)

    def wait_until_ready(self, timeout: float | None = None, stop_on_timeout: bool = True) -> None:
        """Poll ``/v2/health/ready``; fail fast if the process exits. Raises :class:`ServerStartError`."""
        if self.process is None:
            raise ServerError("server was not started")
        timeout = self.ready_timeout if timeout is None else timeout
        ready_url = f"{self.http_url}/v2/health/ready"
        deadline = time.monotonic() + timeout
        while True:
            rc = self.process.poll()
            if rc is not None:
                self.returncode = rc
                self._after_exit()
                raise ServerStartError(
                    f"tritonserver exited with code {rc} before becoming ready "
                    f"(repository {self.model_repository})\n{log_excerpt(self.log_path)}",
                    self.log_path,
                    rc,
                )
            if http_status(ready_url, timeout=1.0) == 200:
                return
            if time.monotonic() >= deadline:
                if stop_on_timeout:
                    self.stop(timeout=5)
                raise ServerStartError(
                    f"tritonserver was not ready after {timeout:.0f} s (stopped it; repository "
                    f"{self.model_repository})\n{log_excerpt(self.log_path)}",
                    self.log_path,
                    None,
                )
            time.sleep(0.1)

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def is_ready(self) -> bool:
        return http_status(f"{self.http_url}/v2/health/ready") == 200

    def is_model_ready(self, name: str, version: str | int = "") -> bool:
        path = f"/v2/models/{name}" + (f"/versions/{version}" if str(version) else "") + "/ready"
        return http_status(self.http_url + path) == 200

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(_read_tail(self.log_path, lines))

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait ``timeout`` s (default ``stop_timeout``), SIGKILL; clean shm. Returns the exit code."""
        self._stopping = True
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor = None
        proc = self.process
        if proc is not None:
            terminate_process(
                proc.pid,
                timeout=self.stop_timeout if timeout is None else timeout,
                poll=lambda: proc.poll() is None,
            )
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.returncode = proc.wait(timeout=5)
        self._after_exit()
        return self.returncode

    def _after_exit(self) -> None:
        _LIVE_SERVERS.discard(self)
        if self.process is not None and self.process.poll() is not None:
            # the server's stubs outlive a crashed server (same process group)
            terminate_process(self.process.pid, timeout=5, poll=lambda: False)
        cleanup_shm(self.shm_prefix)

    def __enter__(self) -> "TritonServer":
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<TritonServer {state} pid={self.pid} http={self.http_port} grpc={self.grpc_port} repo={self.model_repository}>"
