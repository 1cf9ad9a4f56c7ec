"""gRPC's standard health and reflection services, as charlm serves them beside charlm.v1.

grpc's own aio servicers, with two things a charlm.v1 call has: the call's request id in its trailers (the
client's ``x-request-id``, else a fresh one: service/requestid.py), and a health check of a service the server
does not know answered NOT_FOUND with a message that names the ones it does (grpc's says nothing).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from service import errors
from service.requestid import attach, request_id
from service.servicer import abort

Status = int  # (health_pb2.HealthCheckResponse.ServingStatus: an int enum; no stubs here)


def _call_id(context: Any) -> str:
    """The call's request id, already in its trailers."""
    rid = request_id(context.invocation_metadata())
    attach(context, rid)
    return rid


class Health(health.aio.HealthServicer):  # type: ignore[misc,name-defined]  # grpc-stubs predate aio
    """grpc.health.v1.Health: the status of the whole server ("") and of each service set."""

    def __init__(self) -> None:
        super().__init__()
        self.services = {""}  # the services whose status was ever set ("" is grpc's SERVING from the start)

    async def set(self, service: str, status: Status) -> None:
        """Sets the status of ``service`` ("" = the whole server)."""
        self.services.add(service)
        await super().set(service, status)

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> health_pb2.HealthCheckResponse:
        rid = _call_id(context)
        if request.service not in self.services:
            known = ", ".join(repr(s) for s in sorted(self.services))
            await abort(errors.NotFound(f"no service {request.service!r} here; known: {known}",
                                        "SERVICE_NOT_FOUND"), context, rid)  # fmt: skip
        response: health_pb2.HealthCheckResponse = await super().Check(request, context)
        return response

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        _call_id(context)
        await super().Watch(request, context)


class Reflection(reflection.aio.ReflectionServicer):  # type: ignore[misc,name-defined]  # grpc-stubs predate aio
    """grpc.reflection.v1alpha.ServerReflection over ``service_names``."""

    async def ServerReflectionInfo(self, request_iterator: AsyncIterable[reflection_pb2.ServerReflectionRequest],
                                   context: Any) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:  # fmt: skip
        _call_id(context)
        async for response in super().ServerReflectionInfo(request_iterator, context):
            yield response


def add_reflection(server: grpc.aio.Server, service_names: tuple[str, ...]) -> None:
    """Serves reflection of ``service_names`` (and of itself) on ``server``."""
    names = (*service_names, reflection.SERVICE_NAME)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(Reflection(names), server)
