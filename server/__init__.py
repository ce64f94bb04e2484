"""Local launcher for the real tritonserver bundled in the nvidia-pytriton wheel.

Library use (tests, benchmarks)::

    from server import TritonServer
    with TritonServer("model_repository") as srv:          # free ports, waits until ready
        tritonclient.http.InferenceServerClient(srv.http_endpoint)
        tritonclient.grpc.InferenceServerClient(srv.grpc_endpoint)

``srv.health_url`` serves the supervisor's ``/livez`` and ``/readyz`` (see :mod:`server.supervisor`).

Command line: ``python -m server start|stop|status|run`` (see :mod:`server.cli`).
"""

from .supervisor import DEFAULT_HEALTH_PORT, Supervisor
from .triton import (
    DEFAULT_WORK_DIR,
    ServerError,
    ServerStartError,
    TritonInstall,
    TritonNotFoundError,
    TritonServer,
    WorkDir,
    build_command,
    build_environment,
    cleanup_shm,
    default_work_dir,
    find_free_port,
    find_free_ports,
    find_triton_install,
    log_excerpt,
    new_shm_prefix,
    pid_alive,
    port_in_use,
    prepare_work_dir,
    terminate_process,
)

__all__ = [
    "DEFAULT_HEALTH_PORT",
    "DEFAULT_WORK_DIR",
    "ServerError",
    "ServerStartError",
    "Supervisor",
    "TritonInstall",
    "TritonNotFoundError",
    "TritonServer",
    "WorkDir",
    "build_command",
    "build_environment",
    "cleanup_shm",
    "default_work_dir",
    "find_free_port",
    "find_free_ports",
    "find_triton_install",
    "log_excerpt",
    "new_shm_prefix",
    "pid_alive",
    "port_in_use",
    "prepare_work_dir",
    "terminate_process",
]
