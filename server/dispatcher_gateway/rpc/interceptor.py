"""What every call goes through before and around its handler (CallGuard):

- a request that does not decode (malformed, or nested deeper than protobuf decodes) is
  INVALID_ARGUMENT, where grpc would answer UNKNOWN with the decoder's exception;
- a DispatchService caller is authenticated (auth.Authenticator) and known to the handler as
  `auth.caller()`; without credentials the call is UNAUTHENTICATED;
- a DispatchService call is counted while it runs (by client connection), and refused
  UNAVAILABLE once the gateway drains (drain.Drain);
- a domain error a handler raises is the status errors.to_status gives it;
- an exception no handler expected is INTERNAL with a generic message and one log line, where
  grpc would answer UNKNOWN with the exception's text and log its traceback.

Handlers hold only their own logic: they raise domain errors, and read their caller.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any, NoReturn, TypeAlias

import grpc

from ..core import logfields
from ..core.errors import GatewayError
from .auth import Authenticator, set_caller
from .drain import Drain
from .errors import to_status
from .throttled_log import ThrottledLog, one_line, report_internal

log = logging.getLogger("dispatcher_gateway.rpc")

Context = grpc.aio.ServicerContext[Any, Any]
# Generic only in the type stubs: strings, not evaluated at run time.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"

UNDECODABLE = (
    "the request could not be decoded: it is not a valid message of this method, or it is "
    "nested too deeply (google.protobuf.Struct values: at most 32 levels)"
)


class Undecodable:
    """What a request that does not decode is handed to the guard as, instead of an exception
    grpc would answer UNKNOWN."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


def _decoding(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        # DecodeError, and whatever else a decoder may raise on bytes it never saw before.
        except Exception:
            return Undecodable(len(data))

    return decode


class CallGuard(grpc.aio.ServerInterceptor):
    def __init__(self, auth: Authenticator, drain: Drain, *, services: frozenset[str]) -> None:
        """`services`: the full names of the services whose callers must be known and whose
        calls a drain counts and refuses (health and reflection answer anyone, at any time)."""
        self.auth = auth
        self.drain = drain
        self.services = services
        self.log = ThrottledLog(log)
        self._guarded: dict[str, Handler] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        method = handler_call_details.method
        guarded = self._guarded.get(method)
        if guarded is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return None
            # Only methods that exist are kept: a caller cannot grow this by inventing names.
            guarded = self._guarded[method] = self._guard(method, handler)
        return guarded

    def _guard(self, method: str, handler: Handler) -> Handler:
        service = method.lstrip("/").partition("/")[0]
        checked = service in self.services
        decode = _decoding(handler.request_deserializer)
        for kind, make in _KINDS:
            behaviour = getattr(handler, kind)
            if behaviour is None:
                continue
            streaming = handler.request_streaming
            guarded: Callable[[Any, Context], Any]
            if inspect.isasyncgenfunction(behaviour):
                guarded = self._generator(method, behaviour, checked, streaming)
            elif inspect.iscoroutinefunction(behaviour):
                guarded = self._coroutine(method, behaviour, checked, streaming)
            else:  # synchronous handlers: this server registers none
                return handler
            return make(guarded, decode, handler.response_serializer)
        return handler

    def _coroutine(
        self, method: str, behaviour: Any, checked: bool, streaming: bool
    ) -> Callable[[Any, Context], Awaitable[Any]]:
        async def guarded(request: Any, context: Context) -> Any:
            try:
                request = await self._admit(method, request, context, checked, streaming)
                with self._counted(checked, context):
                    return await behaviour(request, context)
            except Exception as exc:
                await self._report(method, exc, context)

        return guarded

    def _generator(
        self, method: str, behaviour: Any, checked: bool, streaming: bool
    ) -> Callable[[Any, Context], AsyncIterator[Any]]:
        async def guarded(request: Any, context: Context) -> AsyncIterator[Any]:
            try:
                request = await self._admit(method, request, context, checked, streaming)
                with self._counted(checked, context):
                    async for response in behaviour(request, context):
                        yield response
            except Exception as exc:
                await self._report(method, exc, context)

        return guarded

    def _counted(self, checked: bool, context: Context) -> AbstractContextManager[None]:
        """Counted by the client's connection: a drain closes each once its calls are done."""
        return self.drain.call(context.peer()) if checked else contextlib.nullcontext()

    async def _admit(
        self, method: str, request: Any, context: Context, authenticate: bool, streaming: bool
    ) -> Any:
        """The request the handler is given, once it decoded and its caller is known."""
        if streaming:
            request = self._decoded(method, request, context)
        elif isinstance(request, Undecodable):
            await self._undecodable(method, request, context)
        if authenticate:
            await self._authenticate(method, context)
        return request

    async def _decoded(
        self, method: str, requests: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, Undecodable):
                await self._undecodable(method, request, context)
            yield request

    async def _authenticate(self, method: str, context: Context) -> None:
        try:
            client = self.auth.client(context.invocation_metadata(), context.auth_context())
        except GatewayError as exc:
            self.log.log(
                logging.INFO,
                "refused",
                "%s refused for %s: %s",
                method,
                one_line(context.peer()),
                exc,
            )
            await _abort(context, exc)
        # Each call runs in a task of its own, so the caller set here is this call's alone.
        set_caller(client)
        logfields.known(client=client.name)

    async def _undecodable(self, method: str, request: Undecodable, context: Context) -> NoReturn:
        self.log.log(
            logging.INFO,
            "undecodable",
            "%s: a request of %d bytes from %s did not decode",
            method,
            request.size,
            one_line(context.peer()),
        )
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, UNDECODABLE)
        raise AssertionError("unreachable: abort raises")

    async def _report(self, method: str, exc: Exception, context: Context) -> NoReturn:
        """The call's status for what it raised: a domain error's own, INTERNAL for the rest."""
        if isinstance(exc, grpc.aio.AbortError):
            raise exc
        if isinstance(exc, GatewayError):
            await _abort(context, exc)
        await context.abort(grpc.StatusCode.INTERNAL, report_internal(self.log, method, exc))
        raise AssertionError("unreachable: abort raises")


async def _abort(context: Context, exc: GatewayError) -> NoReturn:
    status = to_status(exc)
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("unreachable: abort raises")


_KINDS: tuple[tuple[str, Callable[..., Handler]], ...] = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)
