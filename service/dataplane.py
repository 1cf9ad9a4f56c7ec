"""The transport-free facade the gRPC servicer calls: limits, validation, sessions and engines put together."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import TypeVar

from service import errors, sampling
from service.config import Limits
from service.inflight import InFlight, StreamObserver
from service.registry import Model, Registry
from service.requests import (
    ChatAction,
    ChatCancel,
    ChatEvent,
    ChatFeed,
    ChatGenerate,
    ChatOpen,
    Done,
    Fed,
    FeedChunk,
    GenerateRequest,
    Turn,
)
from service.sessions import Session, SessionStore
from service.types import Chunk, FeedResult, Finish, GenerateParams, SeqState

T = TypeVar("T")
CHAT_QUEUE = 16  # Chat turns received ahead of the one in progress


class DataPlane:
    """Generate, sessions, Feed, Chat and models, with the server's limits; refuses new streams while draining."""

    def __init__(self, registry: Registry, sessions: SessionStore, limits: Limits,
                 observer: StreamObserver | None = None) -> None:
        self.registry, self.sessions, self._limits = registry, sessions, limits
        self._in_flight = InFlight(limits.max_streams, observer)
        self._cancels: set[asyncio.Event] = set()  # one per chat turn generating, set when draining ends
        self._closed = asyncio.Event()  # set when the drain's grace period ends

    async def generate(self, req: GenerateRequest) -> AsyncGenerator[Chunk | Done, None]:
        """Streams a generation from the request's session or a fresh state."""
        # Cancelled with every other generation when the drain's grace period ends (``_closed``). The engine's
        # generator is read here, not through one of this class's: after an idle gap every layer of a request's
        # first message runs cold (docs/performance-history.md, the thirty-fourth and thirty-fifth passes).
        with self._in_flight:
            if not req.session_id:
                model = self.registry.resolve(req.model)
                self._check_generate(model, req.prompt, req.params)
                state = model.engine.new_state(req.params.sampling.seed)
                events = model.engine.generate(state, req.prompt, req.params, self._closed)
                async with contextlib.aclosing(events):
                    async for event in events:
                        yield Done(event, model.spec) if isinstance(event, Finish) else event
                return
            async with self.sessions.lease(req.session_id) as session:
                model = self._session_model(session, req.model)
                self._check_generate(model, req.prompt, req.params)
                # Closed here, inside the lease: a generator left to the garbage collector would close after the
                # lease let the session go, while its lane may still write the state (Engine._let_go).
                events = model.engine.generate(session.state, req.prompt, req.params, self._closed)
                try:
                    async for event in events:
                        yield Done(event, model.spec, session.id) if isinstance(event, Finish) else event
                finally:
                    session.ending = True  # (the next request for the session waits for this, see lease)
                    await events.aclose()

    async def _generate(self, model: Model, state: SeqState, params: GenerateParams, session_id: str,
                        cancel: asyncio.Event) -> AsyncGenerator[Chunk | Done, None]:
        """A chat turn's generation: ``cancel`` is the turn's, also set when the drain's grace period ends."""
        self._cancels.add(cancel)
        try:
            async with contextlib.aclosing(model.engine.generate(state, "", params, cancel)) as events:
                async for event in events:
                    yield Done(event, model.spec, session_id) if isinstance(event, Finish) else event
        finally:
            self._cancels.discard(cancel)

    def _check_generate(self, model: Model, prompt: str, params: GenerateParams) -> None:
        lim = self._limits
        self._check_text("prompt", prompt)
        sampling.validate(params.sampling, len(model.vocab))
        if not 1 <= params.max_chars <= lim.max_chars:
            raise errors.InvalidArgument("max_chars", f"must be in [1, {lim.max_chars}], got {params.max_chars}")
        if len(params.stop) > lim.max_stop_sequences:
            raise errors.InvalidArgument("stop", f"at most {lim.max_stop_sequences} stop sequences")
        for s in params.stop:
            if not 1 <= len(s) <= lim.max_stop_chars:
                raise errors.InvalidArgument("stop", f"each stop sequence must have 1 to {lim.max_stop_chars} chars")

    def _check_text(self, name: str, text: str) -> None:
        if len(text) > (limit := self._limits.max_prompt_chars):
            raise errors.InvalidArgument(name, f"{len(text)} characters is over the limit of {limit}")

    async def create_session(self, model: str = "", prime: str = "", ttl_seconds: float = 0) -> Session:
        """A new session of ``model``, its state primed with ``prime``."""
        self._in_flight.refuse_if_draining()
        m = self.registry.resolve(model)
        self._check_text("prime", prime)
        state = m.engine.new_state()
        if prime:
            await m.engine.feed(state, prime, "prime")
        return self.sessions.create(m.spec, state, ttl_seconds)

    def get_session(self, session_id: str) -> Session:
        """A live session."""
        return self.sessions.get(session_id)

    def list_sessions(self, model: str = "") -> list[Session]:
        """Live sessions of every model, of a model name (all versions), or of one "name:version"."""
        if not model:
            return self.sessions.list()
        m = self.registry.resolve(model)
        if ":" in model:
            return self.sessions.list(m.spec)
        return [s for s in self.sessions.list() if s.model.split(":")[0] == m.info.name]

    def delete_session(self, session_id: str) -> None:
        """Deletes a session."""
        self.sessions.delete(session_id)

    def fork_session(self, session_id: str, ttl_seconds: float = 0) -> Session:
        """A new session with a copy of another's state."""
        self._in_flight.refuse_if_draining()
        return self.sessions.fork(session_id, ttl_seconds)

    def _session_model(self, session: Session, requested: str) -> Model:
        model = self.registry.resolve(session.model)
        # "name" matches any version of the session's model; "name:version" must match exactly
        other = self.registry.resolve(requested) if requested else model
        if other is not model and (":" in requested or other.info.name != model.info.name):
            raise errors.FailedPrecondition(
                f"session {session.id!r} belongs to model {session.model}, not {requested!r}", field="model")
        return model

    async def feed(self, chunks: AsyncIterator[FeedChunk]) -> Fed:
        """Advances a session (or a fresh, discarded state) over streamed text and scores it."""
        with self._in_flight:
            first = await anext(chunks, FeedChunk(""))
            if not first.session_id:
                model = self.registry.resolve(first.model)
                return await self._feed(model, model.engine.new_state(), first.text, chunks, "")
            async with self.sessions.lease(first.session_id) as session:
                model = self._session_model(session, first.model)
                return await self._feed(model, session.state, first.text, chunks, session.id)

    async def _feed(self, model: Model, state: SeqState, text: str, rest: AsyncIterator[FeedChunk],
                    session_id: str) -> Fed:
        total = FeedResult()
        while True:
            self._check_text("text", text)
            if text:
                r = await model.engine.feed(state, text)
                total = FeedResult(total.chars_consumed + r.chars_consumed, total.chars_scored + r.chars_scored,
                                   total.nll_nats + r.nll_nats)
            nxt = await self._unless_closed(anext(rest, None))
            if nxt is None:
                return Fed(session_id, total, model.spec)
            text = nxt.text

    async def chat(self, actions: AsyncIterator[ChatAction]) -> AsyncGenerator[ChatEvent, None]:
        """One session, interleaving feeds and generations; a cancel stops the generation in progress."""
        with self._in_flight:
            opening = await anext(actions, None)
            if not isinstance(opening, ChatOpen):
                raise errors.InvalidArgument("open", "the first Chat message must be `open`")
            if opening.session_id:
                session_id = self.sessions.get(opening.session_id).id
            else:
                session_id = (await self.create_session(opening.model, "", opening.ttl_seconds)).id
            async with self.sessions.lease(session_id) as session:
                model = self._session_model(session, opening.model if opening.session_id else "")
                yield session
                events = self._chat_turns(model, session, actions)
                try:
                    async for event in events:
                        yield event
                finally:
                    session.ending = True  # (as in generate)
                    await events.aclose()

    async def _chat_turns(self, model: Model, session: Session,
                          actions: AsyncIterator[ChatAction]) -> AsyncGenerator[ChatEvent, None]:
        # A reader task keeps receiving while a generation streams, so that a cancel takes effect mid-generation.
        queue: asyncio.Queue[Turn] = asyncio.Queue(CHAT_QUEUE)  # bounded: a flooding client waits, memory doesn't grow
        asked: deque[asyncio.Event] = deque()  # the cancel events of the generations asked for, oldest first
        reader = asyncio.get_running_loop().create_task(self._chat_reader(actions, queue, asked))
        try:
            while (action := await self._unless_closed(queue.get())) is not None:
                self._in_flight.refuse_if_draining()  # a new turn is new work
                if isinstance(action, ChatOpen):
                    raise errors.InvalidArgument("open", "`open` may only be the first Chat message")
                if isinstance(action, ChatFeed):
                    self._check_text("feed", action.text)
                    yield Fed(session.id, await model.engine.feed(session.state, action.text, "feed"))
                    continue
                gen, cancel = action
                try:
                    self._check_generate(model, "", gen.params)
                    if session.state.pending is None:
                        raise errors.InvalidArgument("generate", "the session has no text yet: feed some first")
                    events = self._generate(model, session.state, gen.params, session.id, cancel)
                    async with contextlib.aclosing(events):
                        async for event in events:
                            if isinstance(event, Done):  # before it goes out: a cancel sent after it is the next's
                                asked.popleft()
                            yield event
                finally:
                    if asked and asked[0] is cancel:  # (it ended early: an error, or the client went away)
                        asked.popleft()
            await reader  # re-raises a receive error
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    @staticmethod
    async def _chat_reader(actions: AsyncIterator[ChatAction], queue: asyncio.Queue[Turn],
                           asked: deque[asyncio.Event]) -> None:
        try:
            async for action in actions:
                if isinstance(action, ChatCancel):
                    if asked:  # the generation in progress, else the next one asked for
                        asked[0].set()
                elif isinstance(action, ChatGenerate):
                    asked.append(asyncio.Event())
                    await queue.put((action, asked[-1]))
                else:
                    await queue.put(action)
        except Exception:
            await queue.put(None)  # the turn loop stops and `await reader` re-raises this
            raise
        await queue.put(None)

    def list_models(self) -> tuple[list[Model], Model]:
        """The served versions and the default one."""
        return self.registry.models, self.registry.default

    def get_model(self, model: str) -> Model:
        """One served version ("name", "name:version" or "" for the default)."""
        return self.registry.resolve(model)

    async def _unless_closed(self, next_message: Awaitable[T]) -> T:
        """A client's next message, unless the drain's grace period ends first: then DRAINING, as refused work."""
        nxt = asyncio.ensure_future(next_message)
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait((nxt, closed), return_when=asyncio.FIRST_COMPLETED)
            if nxt.done():
                return nxt.result()
            raise errors.Unavailable("the server is shutting down and the grace period for streams has ended")
        finally:
            nxt.cancel()
            closed.cancel()

    @property
    def active_streams(self) -> int:
        """Generate, Feed and Chat streams in progress."""
        return self._in_flight.count

    async def drain(self, grace_seconds: float) -> None:
        """Refuses new work, waits up to ``grace_seconds`` for streams to end, then cancels generations."""
        self._in_flight.draining = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._in_flight.idle.wait(), grace_seconds)
        for cancel in list(self._cancels):
            cancel.set()
        self._closed.set()
