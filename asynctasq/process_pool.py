"""Runs ``process=True`` tasks in child processes, so CPU-bound work blocks neither the worker's
event loop nor the heartbeats of its other tasks.

- ``start()`` spawns ``size`` children at once with the ``spawn`` start method (safe with threads
  and a running event loop). Each child prepends ``sys_path``, imports ``imports`` once (which
  registers their tasks), reports ready, then runs one task at a time, found only through
  :data:`asynctasq.registry.registry`. Async tasks run on one event loop that lives as long as
  the child.
- Parent and child talk over two pipes in length-prefixed pickle frames. The parent side is
  non-blocking (asyncio pipe transports): a task costs one write and one read callback on the
  worker's loop, children are spawned from a helper thread.
- A task past its ``timeout``, or whose ``run()`` is cancelled, has its child SIGKILLed; a child
  that dies mid-task fails only that task, with :class:`ProcessLost`. Either way a replacement
  starts in the background and takes the freed slot.
- Recycling: after ``max_tasks_per_child`` tasks (the replacement boots while the last one
  runs), or when the child's RSS is above ``max_memory_per_child_mb`` after a task. A retired
  child has delivered its result; it gets end-of-file and exits.

::

    pool = ProcessPool(2, imports=["myapp.tasks"], max_tasks_per_child=1000)
    await pool.start()
    try:
        digest = await pool.run("myapp.tasks.checksum", ["/data/big.bin"], {}, timeout=60)
    finally:
        await pool.close(timeout=30)
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib
import inspect
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import struct
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import IO, Any

from asynctasq.context import TaskInfo
from asynctasq.errors import (
    ConfigError,
    ProcessLost,
    ProcessPoolError,
    RemoteTaskError,
    Retry,
    SerializationError,
    TaskTimeout,
)

__all__ = ["ProcessPool", "ProcessPoolError", "RemoteTaskError"]

log = logging.getLogger(__name__)

DEFAULT_START_TIMEOUT_S = 60.0
"""How long a child may take to import its modules and report ready."""
EXIT_GRACE_S = 2.0
"""How long a retired or idle child gets to exit on end-of-file before it is killed."""
RESPAWN_DELAY_MIN_S = 0.5
RESPAWN_DELAY_MAX_S = 30.0
"""Backoff between attempts to replace a child that failed to start."""

_PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL
_REQUEST = struct.Struct("!QQ")  # payload length, sequence number
_REPLY = struct.Struct("!QBQQ")  # payload length, kind, sequence number, RSS in bytes
# reply kinds
_READY, _INIT_FAILED, _OK, _RAISED, _BAD_RESULT, _BAD_ARGS = range(6)


class _Child:
    """One pool process, as the parent sees it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, number: int) -> None:
        self.number = number
        self.process: BaseProcess | None = None
        self.pid = 0
        self.files: tuple[IO[bytes], IO[bytes]] | None = None
        self.reader: asyncio.ReadTransport | None = None
        self.writer: asyncio.WriteTransport | None = None
        self.watching_sentinel = False
        self.ready: asyncio.Future[None] = loop.create_future()
        self.exited: asyncio.Future[None] = loop.create_future()
        self.spawning = False
        """Its process is being (or was) spawned: it will be reaped, not just forgotten."""
        self.is_ready = False
        self.reply: asyncio.Future[Any] | None = None
        self.seq = 0
        self.task_name = ""
        self.started_tasks = 0
        self.retire_after_task = False
        self.doomed = False
        """Killed, retiring or lost: it never gets another task."""
        self.gone = False
        """Its reply pipe is closed (it exited or was killed)."""
        self.reaped = False
        self.kill_reason = ""

    def __repr__(self) -> str:
        return f"<pool process #{self.number} pid={self.pid}>"


class _ReplyProtocol(asyncio.Protocol):
    def __init__(self, pool: ProcessPool, child: _Child) -> None:
        self._pool = pool
        self._child = child
        self._buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= _REPLY.size:
            length, kind, seq, rss = _REPLY.unpack_from(buffer)
            end = _REPLY.size + length
            if len(buffer) < end:
                return
            payload = bytes(buffer[_REPLY.size : end])
            del buffer[:end]
            self._pool._on_reply(self._child, kind, seq, rss, payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self._pool._on_child_gone(self._child)


class ProcessPool:
    """A fixed number of child processes that run registered tasks by name.

    Args:
        size: number of children (default: the CPUs this process may use).
        max_tasks_per_child: retire a child after this many tasks (default: never).
        max_memory_per_child_mb: retire a child whose RSS is above this after a task.
        imports: modules each child imports once at start (they register the tasks).
        sys_path: directories each child prepends to ``sys.path`` before importing.
        start_timeout: seconds a child may take to import ``imports`` and report ready.
    """

    def __init__(
        self,
        size: int | None = None,
        *,
        max_tasks_per_child: int | None = None,
        max_memory_per_child_mb: float | None = None,
        imports: Sequence[str] = (),
        sys_path: Sequence[str] = (),
        start_timeout: float = DEFAULT_START_TIMEOUT_S,
    ) -> None:
        size = _usable_cpus() if size is None else size
        if size < 1:
            raise ConfigError(f"process pool size must be at least 1, not {size}")
        if max_tasks_per_child is not None and max_tasks_per_child < 1:
            raise ConfigError(f"max_tasks_per_child must be at least 1, not {max_tasks_per_child}")
        if max_memory_per_child_mb is not None and max_memory_per_child_mb <= 0:
            raise ConfigError(f"max_memory_per_child_mb must be positive, not {max_memory_per_child_mb}")
        self._size = size
        self._max_tasks = max_tasks_per_child
        self._max_rss = None if max_memory_per_child_mb is None else int(max_memory_per_child_mb * 2**20)
        self._imports = tuple(imports)
        self._sys_path = tuple(str(p) for p in sys_path)
        self._start_timeout = start_timeout
        self._context = multiprocessing.get_context("spawn")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._state = "new"  # new -> starting -> running -> closing -> closed
        self._slots: set[_Child] = set()
        """Children holding one of the ``size`` slots: starting, idle or busy."""
        self._children: set[_Child] = set()
        """Every child not yet reaped, with a slot or not (retiring, killed)."""
        self._idle: deque[_Child] = deque()
        self._waiters: deque[asyncio.Future[_Child]] = deque()
        self._background: set[asyncio.Task[None]] = set()
        self._numbers = itertools.count(1)
        self._seq = itertools.count(1)
        self._respawn_delay = RESPAWN_DELAY_MIN_S
        self._close_task: asyncio.Task[None] | None = None

    @property
    def size(self) -> int:
        return self._size

    @property
    def pids(self) -> list[int]:
        """Process ids of the children ready to take tasks or running one (not those starting)."""
        return sorted(c.pid for c in self._slots if c.is_ready and not c.doomed)

    # -- lifecycle

    async def start(self) -> None:
        """Spawn every child and wait until all have imported their modules."""
        if self._state != "new":
            raise ProcessPoolError(f"the process pool cannot start: it is {self._state}")
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="asynctasq-pool-spawn")
        self._state = "starting"
        _live_pools.add(self)
        children = [self._new_child() for _ in range(self._size)]
        try:
            results = await asyncio.gather(*(self._launch(c) for c in children), return_exceptions=True)
        except BaseException:
            await self._abort_start()
            raise
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None or self._state != "starting":
            await self._abort_start()
            if failure is not None:
                raise failure
            raise ProcessPoolError("the process pool was closed while it started")
        self._state = "running"
        log.debug("process pool started: pids %s", self.pids)
        for child in children:
            self._release(child)

    async def run(
        self,
        task_name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        timeout: float | None,
        *,
        context: TaskInfo | None = None,
    ) -> Any:
        """Run the registered task ``task_name`` in a child; return its value or raise its error.
        ``context`` is what :func:`asynctasq.current_task` returns in the child.

        Raises :class:`TaskTimeout` past ``timeout`` seconds and :class:`ProcessLost` when the child
        dies, having replaced the child; :class:`SerializationError` when an argument or the return
        value does not pickle. Cancelling the caller kills the child. Waits for a free child.
        """
        if self._state != "running":
            raise ProcessPoolError(f"the process pool is {self._state}: it takes no tasks")
        payload = _encode_request(task_name, args, kwargs, context)
        child = await self._acquire()
        if self._state != "running":  # closed while this call waited; close() stops the child
            raise ProcessPoolError(f"the process pool is {self._state}: it takes no tasks")
        loop = self._loop
        assert loop is not None and child.writer is not None
        reply: asyncio.Future[Any] = loop.create_future()
        child.seq = seq = next(self._seq)
        child.reply = reply
        child.task_name = task_name
        child.started_tasks += 1
        if self._max_tasks is not None and child.started_tasks >= self._max_tasks:
            child.retire_after_task = True
            self._give_up_slot(child)  # its replacement boots while this last task runs
        child.writer.write(_REQUEST.pack(len(payload), seq) + payload)
        timer = None if timeout is None else loop.call_later(timeout, self._on_timeout, child, reply, timeout)
        try:
            return await reply
        except asyncio.CancelledError:
            if child.reply is reply:
                child.reply = None
                self._kill(child, "its task was cancelled")
            raise
        finally:
            if timer is not None:
                timer.cancel()

    async def close(self, timeout: float | None = None) -> None:
        """Stop taking tasks, wait up to ``timeout`` seconds (``None``: no limit) for running ones,
        then kill every child; their tasks raise :class:`ProcessLost`. Safe to call twice."""
        if self._state == "new":
            self._state = "closed"
            return
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self._close(timeout))
        await asyncio.shield(self._close_task)

    async def _close(self, timeout: float | None) -> None:
        self._state = "closing"
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ProcessPoolError("the process pool closed before a process was free"))
        while self._idle:
            self._retire(self._idle.popleft())
        running = [c.reply for c in self._children if c.reply is not None]
        if running:
            await asyncio.wait(running, timeout=timeout)
        retiring = [c.exited for c in self._children if c.doomed and not c.gone]
        if retiring:
            await asyncio.wait(retiring, timeout=EXIT_GRACE_S)
        for child in list(self._children):
            self._kill(child, "the pool was closed")
        waits = [c.exited for c in self._children] + list(self._background)
        if waits:
            await asyncio.wait(waits, timeout=EXIT_GRACE_S + 5)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        self._state = "closed"
        _live_pools.discard(self)

    async def _abort_start(self) -> None:
        self._state = "closing"
        for child in list(self._children):
            self._kill(child, "the pool failed to start")
        waits = [c.exited for c in self._children] + list(self._background)
        if waits:
            await asyncio.wait(waits, timeout=EXIT_GRACE_S + 5)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        self._state = "closed"
        _live_pools.discard(self)

    # -- children

    def _new_child(self) -> _Child:
        assert self._loop is not None
        child = _Child(self._loop, next(self._numbers))
        self._slots.add(child)
        self._children.add(child)
        return child

    async def _launch(self, child: _Child) -> None:
        """Spawn the child and connect its pipes, then wait until it is ready."""
        loop = self._loop
        assert loop is not None
        if child.doomed:
            raise ProcessPoolError("the process pool closed before this process started")
        child.spawning = True
        setup = loop.create_task(self._spawn_and_connect(child))
        self._track(setup)
        try:
            await asyncio.shield(setup)  # once spawned, a child must be connected to be reaped
        except asyncio.CancelledError:

            def kill(task: asyncio.Task[None]) -> None:
                if not task.cancelled():
                    task.exception()
                self._kill(child, "its start was cancelled")

            setup.add_done_callback(kill)
            raise
        if child.doomed:
            self._kill(child, child.kill_reason or "the pool was closed")
        try:
            await asyncio.wait_for(asyncio.shield(child.ready), self._start_timeout)
        except TimeoutError:
            self._kill(child, "it did not start in time")
            raise ProcessPoolError(
                f"pool process {child.pid} did not import {list(self._imports)} within "
                f"{self._start_timeout:g}s; raise start_timeout if the imports are slow"
            ) from None
        except BaseException:
            self._kill(child, "its start failed")
            raise
        child.is_ready = True

    async def _spawn_and_connect(self, child: _Child) -> None:
        loop = self._loop
        assert loop is not None
        try:
            await loop.run_in_executor(self._executor, self._spawn, child)
        except BaseException:
            self._forget(child)
            raise
        assert child.process is not None and child.files is not None
        reader_file, writer_file = child.files
        try:
            child.reader, _ = await loop.connect_read_pipe(lambda: _ReplyProtocol(self, child), reader_file)
            child.writer, _ = await loop.connect_write_pipe(asyncio.Protocol, writer_file)
            loop.add_reader(child.process.sentinel, self._on_sentinel, child)
            child.watching_sentinel = True
        except BaseException:
            self._kill(child, "its pipes could not be connected")
            self._on_child_gone(child)
            raise

    def _spawn(self, child: _Child) -> None:
        """Start the child process; runs in the helper thread (a fork+exec takes milliseconds)."""
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        theirs = (Connection(request_r, writable=False), Connection(reply_w, readable=False))
        try:
            process = self._context.Process(
                target=_child_main,
                name=f"asynctasq-pool-{child.number}",
                args=(*theirs, self._imports, self._sys_path, self._max_rss is not None),
            )
            process.start()
        except BaseException:
            os.close(request_w)
            os.close(reply_r)
            raise
        finally:
            for connection in theirs:
                connection.close()
        child.files = (open(reply_r, "rb", buffering=0), open(request_w, "wb", buffering=0))  # noqa: SIM115
        child.process = process
        child.pid = process.pid or 0

    def _forget(self, child: _Child) -> None:
        """Drop a child that never got a process."""
        child.doomed = child.gone = child.reaped = True
        self._slots.discard(child)
        self._children.discard(child)
        _fail_ready(child, ProcessPoolError("the pool process could not be spawned"))
        if not child.exited.done():
            child.exited.set_result(None)

    def _kill(self, child: _Child, reason: str) -> None:
        """SIGKILL the child and give its slot to a replacement (once)."""
        if not child.kill_reason:
            child.kill_reason = reason
        child.doomed = True
        self._give_up_slot(child, replace=child.is_ready)
        if not child.spawning:
            self._forget(child)
        elif child.process is not None and not child.reaped:
            with contextlib.suppress(OSError, ValueError):
                child.process.kill()

    def _retire(self, child: _Child) -> None:
        """Close the child's request pipe: it exits once it sees end-of-file."""
        child.doomed = True
        self._give_up_slot(child)
        if child.writer is not None:
            child.writer.close()
        assert self._loop is not None
        self._loop.call_later(EXIT_GRACE_S, self._kill_if_alive, child)

    def _kill_if_alive(self, child: _Child) -> None:
        if not child.reaped:
            self._kill(child, "it did not exit after it was retired")

    def _give_up_slot(self, child: _Child, replace: bool = True) -> None:
        if child not in self._slots:
            return
        self._slots.discard(child)
        with contextlib.suppress(ValueError):
            self._idle.remove(child)
        if replace and self._state == "running":
            self._boot_replacement()

    def _boot_replacement(self) -> None:
        if self._state != "running":
            return
        assert self._loop is not None
        child = self._new_child()
        self._track(self._loop.create_task(self._boot(child), name=f"asynctasq-pool-boot-{child.number}"))

    def _track(self, task: asyncio.Task[None]) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _boot(self, child: _Child) -> None:
        try:
            await self._launch(child)
        except Exception as exc:  # noqa: BLE001 - logged, then retried with a backoff
            self._slots.discard(child)
            if self._state != "running":
                return
            delay = self._respawn_delay
            self._respawn_delay = min(delay * 2, RESPAWN_DELAY_MAX_S)
            log.error("could not start a replacement pool process (retrying in %gs): %s", delay, exc)
            assert self._loop is not None
            self._loop.call_later(delay, self._boot_replacement)
            return
        self._respawn_delay = RESPAWN_DELAY_MIN_S
        if child in self._slots and self._state == "running" and not child.doomed:
            self._release(child)

    async def _acquire(self) -> _Child:
        assert self._loop is not None
        while True:
            while self._idle:
                child = self._idle.popleft()
                if not child.doomed:
                    return child
            waiter: asyncio.Future[_Child] = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                child = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._release(waiter.result())
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                raise
            if not child.doomed:
                return child

    def _release(self, child: _Child) -> None:
        if child.doomed:
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(child)
                return
        self._idle.append(child)

    # -- events from the children

    def _on_reply(self, child: _Child, kind: int, seq: int, rss: int, payload: bytes) -> None:
        if kind == _READY:
            if not child.ready.done():
                child.ready.set_result(None)
            return
        if kind == _INIT_FAILED:
            text = payload.decode(errors="replace").rstrip()
            _fail_ready(
                child,
                ProcessPoolError(f"pool process {child.pid} failed to import {list(self._imports)}:\n{text}"),
            )
            return
        reply = child.reply
        if reply is None or seq != child.seq:
            return  # the task timed out or was cancelled; the child is being killed
        child.reply = None
        if not reply.done():
            try:
                reply.set_result(self._decode(child, kind, payload))
            except Exception as exc:  # noqa: BLE001 - the task's failure, for run() to raise
                reply.set_exception(exc)
        if child.doomed:
            return
        if self._state == "closing":
            self._retire(child)
        elif self._state == "running" and (
            child.retire_after_task or (self._max_rss is not None and rss > self._max_rss)
        ):
            if not child.retire_after_task:
                log.info(
                    "recycling pool process %d: RSS %.0f MB is above %.0f MB",
                    child.pid,
                    rss / 2**20,
                    (self._max_rss or 0) / 2**20,
                )
            self._retire(child)
        else:
            self._release(child)

    def _decode(self, child: _Child, kind: int, payload: bytes) -> Any:
        name = child.task_name
        if kind == _OK:
            try:
                return _loads(payload)
            except Exception as error:  # noqa: BLE001 - any unpickling failure, reported
                raise SerializationError(
                    f"task {name!r}: its return value cannot be unpickled in the worker: "
                    f"{type(error).__name__}: {error}"
                ) from None
        if kind == _BAD_RESULT:
            raise SerializationError(f"task {name!r}: {payload.decode(errors='replace')}")
        if kind == _BAD_ARGS:
            raise SerializationError(
                f"task {name!r}: its arguments cannot be unpickled in the pool process: "
                f"{payload.decode(errors='replace')}"
            )
        type_name, message, remote_traceback, exc_bytes, retry = _loads(payload)
        raised: Any = None
        if retry is not None:
            raised = Retry(delay=retry[0], reason=retry[1])
        elif exc_bytes is not None:
            with contextlib.suppress(Exception):
                raised = _loads(exc_bytes)
        if not isinstance(raised, Exception):
            raised = RemoteTaskError(type_name, message, remote_traceback)
        with contextlib.suppress(AttributeError):
            raised.remote_traceback = remote_traceback
        raise raised

    def _on_timeout(self, child: _Child, reply: asyncio.Future[Any], timeout: float) -> None:
        if reply.done() or child.reply is not reply:
            return
        child.reply = None
        reply.set_exception(
            TaskTimeout(f"task {child.task_name!r} timed out after {timeout:g}s; its process was killed")
        )
        self._kill(child, "its task timed out")

    def _on_sentinel(self, child: _Child) -> None:
        """The child exited. Its reply pipe normally says so first; this covers a pipe held open by
        a process the task forked. The delay lets a last reply still in the pipe arrive."""
        self._stop_watching(child)
        assert self._loop is not None
        self._loop.call_later(0.05, self._on_child_gone, child)

    def _stop_watching(self, child: _Child) -> None:
        if child.watching_sentinel and child.process is not None and self._loop is not None:
            child.watching_sentinel = False
            self._loop.remove_reader(child.process.sentinel)

    def _on_child_gone(self, child: _Child) -> None:
        if child.gone:
            return
        child.gone = True
        child.doomed = True
        self._stop_watching(child)
        for transport, file in zip((child.reader, child.writer), child.files or (None, None), strict=True):
            if transport is not None:
                transport.close()
            elif file is not None:
                file.close()
        self._give_up_slot(child, replace=child.is_ready)
        assert self._loop is not None
        self._track(self._loop.create_task(self._reap(child)))

    async def _reap(self, child: _Child) -> None:
        process = child.process
        assert process is not None
        delay, deadline, killed = 0.001, time.monotonic() + EXIT_GRACE_S, False
        while (code := process.exitcode) is None:
            if time.monotonic() > deadline:
                if killed:  # reaped by someone else's waitpid(-1): its status is lost
                    break
                with contextlib.suppress(OSError, ValueError):
                    process.kill()  # it closed its pipe but lives on
                deadline, killed = time.monotonic() + EXIT_GRACE_S, True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        child.reaped = True
        how = "exited (status unknown)" if code is None else _describe_exit(code)
        if child.kill_reason:
            how += f" ({child.kill_reason})"
        elif code == -signal.SIGKILL:
            how += " (out of memory, or killed from outside)"
        if child.reply is not None and not child.reply.done():
            child.reply.set_exception(
                ProcessLost(
                    f"worker process lost: pool process {child.pid} {how} "
                    f"while running task {child.task_name!r}"
                )
            )
        child.reply = None
        _fail_ready(child, ProcessPoolError(f"pool process {child.pid} {how} before it was ready"))
        if child.is_ready and not child.kill_reason and self._state == "running" and code != 0:
            log.warning("pool process %d %s", child.pid, how)
        if code is not None:
            with contextlib.suppress(ValueError):
                process.close()
        self._children.discard(child)
        if not child.exited.done():
            child.exited.set_result(None)

    def _kill_now(self) -> None:
        """Kill every child at once, without the event loop (interpreter exit)."""
        for child in list(self._children):
            if child.process is not None and not child.reaped:
                with contextlib.suppress(Exception):
                    child.process.kill()


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _fail_ready(child: _Child, exc: Exception) -> None:
    if not child.ready.done():
        child.ready.set_exception(exc)
        child.ready.exception()  # whoever awaits it still gets it; nobody else must log it


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


def _type_name(cls: type) -> str:
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _unpicklable_part(value: Any, where: str, depth: int = 0) -> tuple[str, Any, Exception] | None:
    """The innermost part of ``value`` that does not pickle, with its path, or ``None``."""
    try:
        pickle.dumps(value, _PICKLE_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - any failure of pickling, reported
        if depth < 4:
            items: Any = ()
            if isinstance(value, dict):
                items = value.items()
            elif isinstance(value, list | tuple):
                items = enumerate(value)
            for key, item in items:
                found = _unpicklable_part(item, f"{where}[{key!r}]", depth + 1)
                if found is not None:
                    return found
        return where, value, exc
    return None


def _explain(where: str, value: Any, exc: Exception) -> str:
    return (
        f"{where} of type {_type_name(type(value))} cannot cross the process boundary "
        f"({type(exc).__name__}: {exc}); pass plain data (numbers, strings, lists, dicts) or "
        "objects that pickle"
    )


def _encode_request(
    task_name: str, args: Sequence[Any], kwargs: dict[str, Any], context: TaskInfo | None = None
) -> bytes:
    try:
        return pickle.dumps((task_name, args, kwargs, context), _PICKLE_PROTOCOL)
    except Exception as exc:
        found = None
        for i, arg in enumerate(args):
            found = found or _unpicklable_part(arg, f"argument {i}")
        for key, arg in kwargs.items():
            found = found or _unpicklable_part(arg, f"argument {key!r}")
        detail = (
            _explain(*found) if found else f"its arguments cannot be pickled ({type(exc).__name__}: {exc})"
        )
        raise SerializationError(f"task {task_name!r}: {detail}") from exc


class _MainAliasUnpickler(pickle.Unpickler):
    """Finds classes of the main script, which a spawned child knows as ``__mp_main__``."""

    def find_class(self, module: str, name: str) -> Any:
        return super().find_class("__main__" if module == "__mp_main__" else module, name)


def _loads(data: bytes) -> Any:
    try:
        return pickle.loads(data)
    except (AttributeError, ModuleNotFoundError):
        import io

        return _MainAliasUnpickler(io.BytesIO(data)).load()


# -- the child side


def _child_main(
    requests: Connection,
    replies: Connection,
    imports: tuple[str, ...],
    sys_path: tuple[str, ...],
    measure_rss: bool,
) -> None:
    """Entry point of a pool process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    _exit_with_parent()
    for entry in reversed(sys_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    out = replies.fileno()
    try:
        for module in imports:
            importlib.import_module(module)
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it from start()
        _send(out, _INIT_FAILED, 0, 0, traceback.format_exc().encode())
        return
    _send(out, _READY, 0, 0, b"")
    with open(requests.fileno(), "rb", closefd=False) as inbox:
        _serve(inbox, out, measure_rss)


def _serve(inbox: IO[bytes], out: int, measure_rss: bool) -> None:
    loop: asyncio.AbstractEventLoop | None = None
    try:
        while True:
            header = inbox.read(_REQUEST.size)
            if len(header) < _REQUEST.size:
                return  # end-of-file: retired, or the parent is gone
            length, seq = _REQUEST.unpack(header)
            payload = inbox.read(length)
            if len(payload) < length:
                return
            if loop is None:
                loop = _new_event_loop()
            kind, body = _run_one(payload, loop)
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            _send(out, kind, seq, _rss_bytes() if measure_rss else 0, body)
    finally:
        if loop is not None:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


def _run_one(payload: bytes, loop: asyncio.AbstractEventLoop) -> tuple[int, bytes]:
    from asynctasq.context import _current
    from asynctasq.registry import registry

    try:
        name, args, kwargs, context = pickle.loads(payload)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        return _BAD_ARGS, f"{type(exc).__name__}: {exc}".encode()
    token = _current.set(context) if context is not None else None
    try:
        result = registry.resolve(name).invoke(args, kwargs)
        if inspect.isawaitable(result):
            result = loop.run_until_complete(_await(result))
    except BaseException as exc:  # noqa: BLE001 - SystemExit included: the child serves on
        return _RAISED, _encode_exception(exc)
    finally:
        if token is not None:
            _current.reset(token)
    try:
        return _OK, pickle.dumps(result, _PICKLE_PROTOCOL)
    except Exception as exc:  # noqa: BLE001
        found = _unpicklable_part(result, "return value") or ("return value", result, exc)
        return _BAD_RESULT, _explain(*found).encode()


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _encode_exception(exc: BaseException) -> bytes:
    text = "".join(traceback.format_exception(exc))
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001
        message = repr(exc)
    retry = (exc.delay, message) if isinstance(exc, Retry) else None
    exc_bytes = None
    if retry is None and isinstance(exc, Exception):
        with contextlib.suppress(Exception):
            exc_bytes = pickle.dumps(exc, _PICKLE_PROTOCOL)
    return pickle.dumps((_type_name(type(exc)), message, text, exc_bytes, retry), _PICKLE_PROTOCOL)


def _send(fd: int, kind: int, seq: int, rss: int, payload: bytes) -> None:
    view = memoryview(_REPLY.pack(len(payload), kind, seq, rss) + payload)
    while view:
        view = view[os.write(fd, view) :]


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # peak, not current: an upper bound
        return int(peak if sys.platform == "darwin" else peak * 1024)


def _exit_with_parent() -> None:
    """Exit when the parent dies (SIGKILL included), even in the middle of a task."""
    parent = multiprocessing.parent_process()
    sentinel = getattr(parent, "sentinel", None)
    if sentinel is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="asynctasq-parent-watch", daemon=True).start()


_live_pools: weakref.WeakSet[ProcessPool] = weakref.WeakSet()


@atexit.register
def _kill_children_at_exit() -> None:
    # runs before multiprocessing's own exit hook, which would otherwise wait for the children
    for pool in list(_live_pools):
        pool._kill_now()
