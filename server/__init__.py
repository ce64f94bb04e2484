"""Local launcher and supervisor for the real tritonserver bundled in the nvidia-pytriton wheel.

Library use (tests, benchmarks)::

    from server import TritonServer
    with TritonServer("model_repository") as srv:          # free ports, waits until ready
        tritonclient.http.InferenceServerClient(srv.http_endpoint)
        tritonclient.grpc.InferenceServerClient(srv.grpc_endpoint)

``srv.health_url`` serves the supervisor's ``/livez`` and ``/readyz`` (see :mod:`server.supervisor`).

Command line: ``python -m server start|stop|status|run|drain`` (see :mod:`server.cli`).
"""

from .triton import (
    ServerError,
    ServerStartError,
    TritonServer,
    build_command,
    build_environment,
    cleanup_shm,
    find_free_port,
    find_free_ports,
    pid_alive,
    prepare_work_dir,
)

__all__ = [
    "ServerError",
    "ServerStartError",
    "TritonServer",
    "build_command",
    "build_environment",
    "cleanup_shm",
    "find_free_port",
    "find_free_ports",
    "pid_alive",
    "prepare_work_dir",
]
