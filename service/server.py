"""The grpc.aio server: TextGeneration, health, reflection, /metrics, and a graceful drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from typing import Any

import grpc
from charlm.v1 import charlm_pb2, charlm_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.accept import AcceptSlots, accept_slots
from service.auth import TokenAuth, Tokens
from service.config import ServiceConfig
from service.dataplane import DataPlane
from service.metrics import Metrics
from service.registry import Registry
from service.servicer import Servicer
from service.sessions import InMemorySessionStore
from service.standard import Health, add_reflection
from service.tls import server_credentials

log = logging.getLogger(__name__)

SERVICE_NAME = charlm_pb2.DESCRIPTOR.services_by_name["TextGeneration"].full_name  # "charlm.v1.TextGeneration"
GENERATE = f"/{SERVICE_NAME}/Generate"
_FOREVER_MS = 2**31 - 1  # gRPC's own "infinite" for durations in ms


def server_options(config: ServiceConfig) -> list[tuple[str, Any]]:
    """The gRPC server's channel arguments: message sizes, no shared port, and the connection age if set."""
    size = config.limits.max_message_bytes
    options: list[tuple[str, Any]] = [("grpc.max_send_message_length", size),
                                      ("grpc.max_receive_message_length", size),
                                      ("grpc.so_reuseport", 0)]  # a second server must not share the port
    if config.max_connection_age_seconds > 0:
        grace = config.max_connection_age_grace_seconds
        options += [("grpc.max_connection_age_ms", max(1, round(config.max_connection_age_seconds * 1000))),
                    ("grpc.max_connection_age_grace_ms", min(_FOREVER_MS, round(grace * 1000)) or _FOREVER_MS)]
    return options


def generate_handler(servicer: Servicer) -> grpc.RpcMethodHandler:
    """Generate's handler, as charlm_pb2_grpc registers it: the accept slots serve their calls with it."""
    return grpc.unary_stream_rpc_method_handler(servicer.Generate,
                                                request_deserializer=charlm_pb2.GenerateRequest.FromString,
                                                response_serializer=charlm_pb2.GenerateResponse.SerializeToString)


class Server:
    """One charlm server: start(), then shutdown() (drain, stop, release)."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.port = 0  # bound gRPC port, known after start()
        self.started = False  # True once start() has succeeded: a failed start has nothing to drain
        self.metrics_port: int | None = None  # bound /metrics port, None when disabled
        self.metrics = Metrics()
        self.health = Health()
        self._grpc: grpc.aio.Server | None = None
        self._dataplane: DataPlane | None = None
        self._registry: Registry | None = None
        self._sessions: InMemorySessionStore | None = None
        self.slots: AcceptSlots | None = None  # the accept slots, once started (None: none)

    async def start(self) -> None:
        """Loads the models, binds the ports and starts serving."""
        cfg = self.config
        # Before the models load (seconds): a bad certificate or token file fails at once.
        credentials = server_credentials(cfg.security)
        sec = cfg.security
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if sec.auth:
            interceptors.append(TokenAuth(Tokens(sec.auth_token, sec.auth_token_file), self.metrics, cfg.access_log))
        self._registry = Registry.load(cfg.model_repo, cfg.runtime, cfg.engine, cfg.default_model, self.metrics,
                                       cfg.versions)
        await self._registry.start()
        self._sessions = InMemorySessionStore(cfg.sessions, self.metrics)
        self._sessions.start()
        self._dataplane = DataPlane(self._registry, self._sessions, cfg.limits, self.metrics)
        self._grpc = grpc.aio.server(interceptors=interceptors, options=server_options(cfg))
        servicer = Servicer(self._dataplane, self.metrics, cfg.access_log)
        charlm_pb2_grpc.add_TextGenerationServicer_to_server(servicer, self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        if cfg.reflection:
            add_reflection(self._grpc, (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name))
        address = f"{cfg.host}:{cfg.port}"
        try:
            if credentials is None:
                self.port = self._grpc.add_insecure_port(address)
            else:
                self.port = self._grpc.add_secure_port(address, credentials)
        except RuntimeError as e:  # grpc says only "Failed to bind"
            raise OSError(f"--host/--port: cannot listen on {address} (in use?): {e}") from None
        if cfg.metrics_port >= 0:
            try:
                self.metrics_port = self.metrics.serve(cfg.metrics_host, cfg.metrics_port)
            except OSError as e:  # "[Errno 98] Address already in use" alone names neither setting nor address
                raise OSError(f"--metrics-host/--metrics-port: cannot serve /metrics on "
                              f"{cfg.metrics_host}:{cfg.metrics_port}: {e.strerror or e}") from None
        await self._grpc.start()
        self.slots = accept_slots(self._grpc, GENERATE, generate_handler(servicer), interceptors, cfg.accept_slots)
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self.started = True
        tls = "off" if credentials is None else "mutual" if sec.tls_client_ca is not None else "on"
        slots = 0 if self.slots is None else self.slots.slots
        log.info("serving %s on %s:%d (default model %s; metrics %s; tls %s; auth %s; accept slots %d)",
                 SERVICE_NAME, cfg.host, self.port, self._registry.default.spec,
                 f"http://{cfg.metrics_host}:{self.metrics_port}/metrics" if self.metrics_port else "off",
                 tls, "token" if sec.auth else "off", slots,
                 extra={"port": self.port, "metrics_port": self.metrics_port, "tls": tls, "auth": sec.auth,
                        "accept_slots": slots})

    async def drain(self) -> None:
        """Health NOT_SERVING, new streams refused (UNAVAILABLE); in-flight ones get the grace period, then end."""
        await self.health.enter_graceful_shutdown()
        self.metrics.draining.set(1)
        if self._dataplane is not None:
            log.info("draining: %d streams in flight, grace %.1fs", self._dataplane.active_streams,
                     self.config.grace_seconds)
            await self._dataplane.drain(self.config.grace_seconds)

    async def shutdown(self) -> None:
        """Drains, stops the gRPC server and releases engines, sessions and the metrics endpoint."""
        if self.started:  # (after a failed start, "draining" and "stopped" lines would mislead: cli logs the error)
            await self.drain()
        if self._grpc is not None:
            # Generations were cancelled at the end of the grace period; this lets their last messages flush.
            await self._grpc.stop(grace=2.0)
        if self.slots is not None:
            await self.slots.close()
        if self._sessions is not None:
            await self._sessions.close()
        if self._registry is not None:
            await self._registry.close()
        self.metrics.close()
        if self.started:
            log.info("stopped")


async def serve(config: ServiceConfig) -> int:
    """Runs a server until SIGTERM or SIGINT, then shuts it down gracefully; returns the exit code (0)."""
    server = Server(config)
    try:
        await server.start()
    except BaseException:
        await server.shutdown()  # engines and the metrics endpoint may already run
        raise
    # What the start made (modules, models, gRPC's objects) lives as long as the process, and a full collection
    # walks every object it tracks with the GIL held: on a 2-core VM one took 18-35 ms, stalling every stream and
    # new call (docs/performance.md, "What makes it fast"). Frozen, a collection walks only what came after.
    gc.freeze()
    server.metrics.gc_frozen.set(gc.get_freeze_count())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received: shutting down")
    await server.shutdown()
    return 0
