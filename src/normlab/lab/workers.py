"""Worker processes for the lab's cells, and how they end on every path.

:class:`WorkerPool` computes cells in ``workers`` spawned processes, one cell at a time
each, over one pipe per worker; :func:`run_in_workers` drives it. What happens when the
run is cut short:

- **Ctrl-C** reaches the whole process group, workers included. A worker ignores SIGINT
  (it is even *started* with SIGINT ignored, so one still importing torch cannot print a
  traceback): the parent decides, and ends its workers itself.
- **The parent**, while cells run, hands the first SIGINT or SIGTERM to the handler that
  was in place (Ctrl-C's ``KeyboardInterrupt``, the command line's ``Terminated``) and
  ignores every later one (:class:`SignalGuard`), so its clean-up always completes: every
  worker is sent SIGTERM, waited for, and killed if it lingers (:data:`GRACE_S`).
- **SIGTERM** ends a worker through ``SystemExit``, so the clean-ups of the cell it was
  computing run (e.g. a SyncBN cell's own processes are ended).
- **A worker that dies** (killed, out of memory) ends the run with :class:`WorkerDied`,
  naming the cell it was computing; the other workers are ended the same way.

Every cell finished before the end is already saved (:class:`~normlab.lab.cells.CellStore`),
so a resumed run computes only the rest.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.util
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from types import FrameType
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    # what signal.signal takes and returns: a handler, SIG_DFL/SIG_IGN, or None
    _Handler: TypeAlias = Callable[[int, FrameType | None], object] | int | signal.Handlers | None

__all__ = ["GRACE_S", "SignalGuard", "WorkerDied", "WorkerPool", "run_in_workers"]

GRACE_S = 2.0  # seconds a worker has to end after SIGTERM before it is killed
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
TaskT = TypeVar("TaskT")  # what the workers compute: the lab's CellTask


class WorkerDied(ChildProcessError):
    """A worker process ended while computing a cell (killed, or out of memory)."""


class SignalGuard:
    """While active (``with guard:``), the first SIGINT or SIGTERM goes to the handler that
    was in place before, and every later one is ignored; inside :meth:`held` a signal is
    only noted, and handled when the block ends.

    So a clean-up that runs after the first Ctrl-C (or inside ``held``) is never cut short
    by a second one. A handler that was ``SIG_DFL`` becomes ``KeyboardInterrupt`` for SIGINT
    and ``SystemExit(143)`` for SIGTERM (the clean-ups run, then the process ends as it
    would have); a signal that was ignored stays ignored. Outside the main thread (where
    Python cannot install handlers) the guard does nothing.
    """

    def __init__(self) -> None:
        self.fired = False
        self._previous: dict[int, _Handler] = {}
        self._holding = False
        self._noted: int | None = None

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                previous = signal.getsignal(signum)
                if previous is not signal.SIG_IGN and previous is not None:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Note signals instead of handling them until the block ends."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
            if self._noted is not None and not self.fired:
                self._fire(self._noted, None)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.fired:
            return
        if self._holding:
            self._noted = self._noted or signum
            return
        self._fire(signum, frame)

    def _fire(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous.get(signum, signal.SIG_DFL)
        try:
            if callable(previous):
                previous(signum, frame)
            elif signum == signal.SIGINT:
                raise KeyboardInterrupt
            else:
                raise SystemExit(128 + signum)
        except BaseException:
            self.fired = True
            raise


@contextlib.contextmanager
def _sigint_ignored_in_children() -> Iterator[None]:
    """Processes started in the block begin with SIGINT ignored (the disposition survives
    ``exec``, and Python then installs no ``KeyboardInterrupt``); a Ctrl-C meanwhile is
    held back by the signal mask and handled here once the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@dataclass(frozen=True)
class _Done:
    result: dict[str, Any]
    seconds: float


@dataclass(frozen=True)
class _Failed:
    error: bytes | None  # the pickled exception (None: it does not survive pickling)
    text: str  # its traceback in the worker

    @classmethod
    def of(cls, error: BaseException) -> _Failed:
        text = "".join(traceback.format_exception(error))
        try:
            payload: bytes | None = pickle.dumps(error)
            pickle.loads(payload)  # some exceptions pickle but do not unpickle
        except Exception:
            payload = None
        return cls(payload, text)

    def exception(self, what: str) -> BaseException:
        error = pickle.loads(self.error) if self.error is not None else RuntimeError(self.text)
        error.add_note(f"raised in the worker computing {what}:\n{self.text.rstrip()}")
        return error


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _thread_lock_for_progress_bars() -> None:
    """tqdm guards its bars with a lock shared between processes by default, a semaphore
    that a killed worker would leave behind (the resource tracker then warns); a worker's
    bars are its own, so a thread lock does."""
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())


def _serve(
    connection: Connection,
    compute: Callable[[TaskT], Mapping[str, Any]],
    init: Callable[..., None] | None,
    init_args: tuple[Any, ...],
) -> None:
    """A worker's life: set up, then compute each task the parent sends, until it sends
    None or goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    _thread_lock_for_progress_bars()
    try:
        if init is not None:
            init(*init_args)
        with contextlib.suppress(EOFError, BrokenPipeError):
            while (task := connection.recv()) is not None:
                started = time.perf_counter()
                try:
                    result = dict(compute(task))
                except Exception as error:
                    connection.send(_Failed.of(error))
                    continue
                connection.send(_Done(result, time.perf_counter() - started))
    except SystemExit as stop:  # SIGTERM: the cell's clean-ups have run; the interpreter's
        # own (a second or more with torch loaded) would only delay the parent
        multiprocessing.util._exit_function()  # finalizers: e.g. semaphores unregistered
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(stop.code if isinstance(stop.code, int) else 1)


@dataclass
class _Worker(Generic[TaskT]):
    process: BaseProcess  # a spawned multiprocessing Process
    connection: Connection
    task: TaskT | None = None  # what it is computing; None when idle
    label: str = ""  # the task's name in messages


class WorkerPool(Generic[TaskT]):
    """``workers`` spawned processes computing tasks with ``compute(task)``.

    :meth:`start` them, hand out tasks (:meth:`give`, :meth:`next_done`), then either
    :meth:`finish` (each worker exits after its last task) or :meth:`end` (at once:
    SIGTERM, then SIGKILL after :data:`GRACE_S`); both reap every worker.

    Args:
        workers: number of processes.
        compute: a module-level function (workers import it by name).
        init, init_args: run once in each worker before its first task.
    """

    def __init__(
        self,
        workers: int,
        compute: Callable[[TaskT], Mapping[str, Any]],
        init: Callable[..., None] | None = None,
        init_args: tuple[Any, ...] = (),
    ) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._compute = compute
        self._init = (init, init_args)
        self.count = workers
        self.workers: list[_Worker[TaskT]] = []

    def start(self) -> None:
        """Start the workers, each with SIGINT ignored from its first instruction."""
        with _sigint_ignored_in_children():
            for _ in range(self.count):
                self.workers.append(self._start())

    def _start(self) -> _Worker[TaskT]:
        mine, theirs = self._context.Pipe()
        process = self._context.Process(target=_serve, args=(theirs, self._compute, *self._init))
        process.start()
        theirs.close()
        return _Worker(process, mine)

    def idle(self) -> list[_Worker[TaskT]]:
        return [worker for worker in self.workers if worker.task is None]

    def busy(self) -> list[_Worker[TaskT]]:
        return [worker for worker in self.workers if worker.task is not None]

    def give(self, worker: _Worker[TaskT], task: TaskT, label: str) -> None:
        """Send ``task`` to an idle ``worker``."""
        worker.task, worker.label = task, label
        try:
            worker.connection.send(task)
        except (BrokenPipeError, ConnectionResetError):
            raise self._died(worker) from None

    def next_done(self) -> tuple[TaskT, dict[str, Any], float]:
        """Wait for a busy worker to finish: ``(task, result, seconds)``.

        Raises:
            WorkerDied: a worker ended (the message names its task).
            Exception: the exception ``compute`` raised in the worker (the worker's
                traceback in a note).
        """
        by_handle: dict[Any, _Worker[TaskT]] = {}  # keys: connections and sentinels
        for worker in self.workers:
            if worker.task is not None:
                by_handle[worker.connection] = worker
            by_handle[worker.process.sentinel] = worker
        ready = wait(list(by_handle))
        replies = [by_handle[h] for h in ready if isinstance(h, Connection)]
        for worker in replies or [by_handle[h] for h in ready]:
            try:
                reply = worker.connection.recv()
            except (EOFError, ConnectionResetError):
                raise self._died(worker) from None
            task, worker.task = worker.task, None
            if isinstance(reply, _Failed):
                raise reply.exception(worker.label)
            return task, reply.result, reply.seconds
        raise AssertionError("wait() returned no ready handle")  # pragma: no cover

    def _died(self, worker: _Worker[TaskT]) -> WorkerDied:
        worker.process.join(GRACE_S)
        code = worker.process.exitcode
        how = (
            f"killed by {signal.Signals(-code).name}"
            if code is not None and code < 0
            else f"exit code {code}"
        )
        what = f"computing {worker.label}" if worker.task is not None else "waiting for work"
        return WorkerDied(f"the worker process {what} died ({how})")

    def finish(self) -> None:
        """Tell every worker to exit, and wait for them (killing any that lingers)."""
        for worker in self.workers:
            with contextlib.suppress(OSError):
                worker.connection.send(None)
        deadline = time.monotonic() + GRACE_S
        for worker in self.workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        self.end()

    def end(self) -> None:
        """End every worker now (SIGTERM, then SIGKILL after :data:`GRACE_S`) and reap it."""
        alive = [w.process for w in self.workers if w.process.exitcode is None]
        for process in alive:
            if process.pid is not None and process.exitcode is None:
                process.terminate()
        deadline = time.monotonic() + GRACE_S
        for process in alive:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in alive:
            if process.exitcode is None:
                process.kill()
                process.join()
        for worker in self.workers:
            worker.connection.close()
            worker.process.close()
        self.workers = []


def run_in_workers(
    tasks: Sequence[TaskT],
    compute: Callable[[TaskT], Mapping[str, Any]],
    finish: Callable[[TaskT, dict[str, Any], float], None],
    *,
    workers: int,
    label: Callable[[TaskT], str] = str,
    init: Callable[..., None] | None = None,
    init_args: tuple[Any, ...] = (),
) -> None:
    """Compute every task in a :class:`WorkerPool`, in order, calling
    ``finish(task, result, seconds)`` in this process as each one ends.

    The first SIGINT/SIGTERM meanwhile stops the run (see :class:`SignalGuard`), after the
    workers are ended and reaped; an exception from ``finish`` or a worker does the same.

    Args:
        tasks: picklable tasks, handed out in order.
        compute: a module-level function of one task returning a mapping.
        finish: called with each task, its result and the seconds ``compute`` took.
        workers: processes at once.
        label: a task's name in messages, e.g. ``"cell compare/norm=batch/seed=0"``.
        init, init_args: run once in each worker before its first task.

    Raises:
        WorkerDied: a worker ended (the message names its task's label).
    """
    queue = list(reversed(tasks))
    pool = WorkerPool(workers, compute, init, init_args)
    with SignalGuard() as guard:
        try:
            pool.start()
            while queue or pool.busy():
                for worker in pool.idle():
                    if queue:
                        task = queue.pop()
                        pool.give(worker, task, label(task))
                finish(*pool.next_done())
        except BaseException:
            with guard.held():
                pool.end()
            raise
        with guard.held():
            pool.finish()
