"""Trainer service: the model lifecycle over gRPC (pmis.v1.TrainerService, port 50055).

Training jobs run in worker processes (multiprocessing, spawn context: a fresh interpreter, no
inherited gRPC threads or locks), never in the server's threads; at most ``--max-jobs`` at a
time, the rest wait QUEUED. Everything durable is in ``registry.db`` under the bundles root, or in
the PostgreSQL database that PMIS_DATABASE_URL names (models/lifecycle/store.py): the job table, the progress events WatchJob streams, the trigger log, and
the registry whose ``champion`` alias the component servers follow (they poll it: see
services/common/server.py, PMIS_WATCH_SECONDS). The server has no bundle of its own: it is
SERVING once the job table is open and jobs a previous trainer left RUNNING are marked FAILED.

Same plumbing as every server: health, reflection, Prometheus metrics, JSON logs, SIGTERM
(NOT_SERVING, running jobs stopped and marked "interrupted: trainer shut down", then stop with
grace). Admin RPCs need `authorization: Bearer <PMIS_ADMIN_TOKEN>` (services/common/auth.py).

The service's parts: config.py (command line), runner.py (the worker processes), worker.py (a
worker's entry point), servicer.py (the RPCs), messages.py (proto <-> domain); this module wires
them into a server (``python -m services.trainer.server``).
"""

from __future__ import annotations

import logging
import os
import sys

from grpc_health.v1 import health_pb2

from pmis.v1 import trainer_pb2_grpc
from services.common.server import ComponentServer
from services.components import SERVICE_NAMES
from services.trainer.config import TrainerConfig, parse_config
from services.trainer.servicer import TrainerServicer

log = logging.getLogger("pmis.trainer")

SERVICE = SERVICE_NAMES["trainer"]


class TrainerServer(ComponentServer):
    """ComponentServer's plumbing; "loaded" means the job table is open and recovered."""

    def _initial_load(self) -> None:
        try:
            self.servicer.open()
        except Exception as e:  # noqa: BLE001 - without its job table the trainer must not pretend to be healthy
            self.load_error = e
            log.error("cannot open the job table: %s", e)
            self.stop()
            return
        self._set_health(health_pb2.HealthCheckResponse.SERVING)

    def stop(self) -> None:
        if self.stopped.is_set():
            return
        self.health.enter_graceful_shutdown()  # NOT_SERVING first
        self.servicer.shutdown()               # running jobs: stopped, marked interrupted (watchers see it)
        super().stop()


def build(cfg: TrainerConfig) -> TrainerServer:
    servicer = TrainerServicer(cfg)
    return TrainerServer(cfg.server, SERVICE, servicer, trainer_pb2_grpc.add_TrainerServiceServicer_to_server)


def main(argv=None) -> int:
    from services.common.logs import setup_logging

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # inherited by the workers (BLAS reads it at start)
    cfg = parse_config(argv)
    setup_logging("trainer")
    server = build(cfg)
    server.install_signal_handlers()
    server.start()
    return server.wait()


if __name__ == "__main__":
    sys.exit(main())
