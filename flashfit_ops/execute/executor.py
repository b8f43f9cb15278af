"""The one executor: carries out any plan, step by step, and when a step fails (or the user
interrupts) undoes the steps done so far in reverse order. It decides no policy: what to do is in
the plan; how to undo each kind of step is mechanical (a started container is removed, a stopped
one started and gated again, a switch switched back).

Every Docker call goes through `backend`, an engine.protocol.Engine (DockerBackend, or a fake in
unit tests).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterator

from flashfit_ops import console
from flashfit_ops.config.model import Config
from flashfit_ops.engine.protocol import Engine
from flashfit_ops.errors import FlashFitError, OperationFailed
from flashfit_ops.execute.health import GateResult, GateSettings, Probe, ProbeResult, http_probe, server_lines, wait_ready
from flashfit_ops.execute.proxy import ProxyController, read_files
from flashfit_ops.plan.common import BACKEND_PORT, LABEL_VERSION, SOCKET_DIR
from flashfit_ops.plan.steps import (
    CleanProxyFiles,
    Drain,
    EnsureNetwork,
    EnsureProxy,
    EnsureVolume,
    Monitor,
    ReleaseStandby,
    RemoveContainer,
    RestartContainer,
    StartContainer,
    Step,
    StopContainer,
    SwitchUpstreams,
    WaitReady,
)

LOG_LINES = 20
LOG_SCAN = 400  # lines read to find LOG_LINES the server wrote (not its request log)
MONITOR_POLL = 0.25


class GateFailed(OperationFailed):
    """A new container did not become ready; it never received traffic."""


class DiedAfterSwitch(OperationFailed):
    """A new container passed the gate, took traffic, then died within the monitor window."""


@dataclass
class StepOutcome:
    kind: str
    description: str
    status: str  # done | failed | undone | undo_failed | warning
    seconds: float = 0.0
    detail: str = ""


@dataclass
class Execution:
    outcomes: list[StepOutcome] = field(default_factory=list)
    # Seconds from container start to its first successful readiness gate, per container.
    ready_seconds: dict[str, float] = field(default_factory=dict)
    # Seconds from SIGTERM to exit of each drained container (in-flight requests finishing).
    drain_seconds: dict[str, float] = field(default_factory=dict)
    # nginx reloads this run needed (only a new slot count or proxy settings need one).
    reloads: int = 0
    warnings: list[str] = field(default_factory=list)
    failed_logs: dict[str, str] = field(default_factory=dict)
    rolled_back: bool = False
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": [asdict(o) for o in self.outcomes],
            "ready_seconds": {k: round(v, 3) for k, v in self.ready_seconds.items()},
            "drain_seconds": {k: round(v, 3) for k, v in self.drain_seconds.items()},
            "reloads": self.reloads,
            "warnings": self.warnings,
            "rolled_back": self.rolled_back,
            "error": self.error,
            "failed_logs": self.failed_logs,
        }


class _Cancelled(Exception):
    pass


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while rolling back, so a second interrupt cannot leave things half
    undone; they are delivered (and raise) afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    blocked = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class Executor:
    def __init__(
        self,
        backend: Engine,
        config: Config,
        *,
        secrets: dict[str, str] | None = None,
        proxy: ProxyController | None = None,
        probe_for: Callable[[str], Probe] | None = None,
        gate: GateSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        say: Callable[[str, str], None] | None = None,
        status: Callable[[str], Any] | None = None,
    ):
        self.backend = backend
        self.config = config
        self.secrets = dict(secrets or {})
        self.clock = clock
        self.sleep = sleep
        self.proxy = proxy or ProxyController(backend, config, clock=clock, sleep=sleep)
        self.probe_for = probe_for or self._http_probe
        self.gate = gate or GateSettings.from_config(config)
        self.say = say or _console_say
        self.status = status or console.status
        self.execution = Execution()
        self.started_at: dict[str, float] = {}
        self.restart_baseline: dict[str, int] = {}
        self.switched_at: float | None = None
        self._undo: list[tuple[str, Callable[[], None]]] = []
        self._stops: dict[str, Any] = {}
        self._stop_pool: ThreadPoolExecutor | None = None

    # -- running ---------------------------------------------------------------------------------
    def run(self, steps: list[Step]) -> Execution:
        """Carry out `steps`. On any failure or interrupt, undo what was done and re-raise."""
        self.execution = Execution()
        self._undo = []
        self._stops = {}
        pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="stop")
        self._stop_pool = pool
        # One try around the whole loop: an interrupt between two steps (while printing the next
        # one, say) must roll back as surely as one inside a step.
        kind, description, started = "start", "start", self.clock()
        try:
            for step in [*steps, None]:
                if step is None and not self._stops:
                    break
                description = step.describe() if step is not None else "wait until the stopped containers exited"
                kind = step.kind if step is not None else "stop_wait"
                started = self.clock()
                if step is None:
                    with self.status("waiting for the old containers to exit"):
                        self._join_stops()
                else:
                    self.say("step", description)
                    getattr(self, f"_do_{step.kind}")(step)
                self.execution.outcomes.append(StepOutcome(kind, description, "done", round(self.clock() - started, 3)))
        except BaseException as error:
            seconds = self.clock() - started
            message = error.message if isinstance(error, FlashFitError) else (str(error) or type(error).__name__)
            if isinstance(error, KeyboardInterrupt):
                message = "interrupted"
            self.execution.outcomes.append(StepOutcome(kind, description, "failed", round(seconds, 3), message))
            self.execution.error = message
            self._rollback()
            if isinstance(error, FlashFitError):
                error.details = {**error.details, "execution": self.execution.to_dict()}
            raise
        finally:
            pool.shutdown(wait=True)
        return self.execution

    # Stops run in the background: an old container is already out of the upstreams and drained,
    # so its exit overlaps the next batch and the monitor window. Anything that touches it again
    # (remove, restart, undo) and the end of the plan wait for it.
    def _join_stop(self, name: str) -> None:
        future = self._stops.pop(name, None)
        if future is not None:
            future.result()

    def _join_stops(self) -> None:
        for name in list(self._stops):
            self._join_stop(name)

    def _register(self, description: str, undo: Callable[[], None]) -> None:
        self._undo.append((description, undo))

    def _rollback(self) -> None:
        if not self._undo:
            return
        self.execution.rolled_back = True
        self.say("warn", "rolling back")
        with _signals_deferred():
            for name in list(self._stops):
                try:
                    self._join_stop(name)
                except Exception:  # the undo below starts it again either way
                    pass
            while self._undo:
                description, undo = self._undo.pop()
                started = self.clock()
                try:
                    undo()
                except Exception as error:  # keep undoing the rest; report this one
                    detail = error.message if isinstance(error, FlashFitError) else str(error)
                    self.execution.outcomes.append(StepOutcome("undo", description, "undo_failed", round(self.clock() - started, 3), detail))
                    self.execution.warnings.append(f"could not undo '{description}': {detail}")
                    self.say("warn", f"could not undo '{description}': {detail}")
                else:
                    self.execution.outcomes.append(StepOutcome("undo", description, "undone", round(self.clock() - started, 3)))
                    self.say("info", f"  undone: {description}")

    # -- helpers -----------------------------------------------------------------------------------
    def _http_probe(self, name: str) -> Probe:
        address = self.backend.ip_address(name, self.config.network_name)
        if not address:
            return lambda _path, _timeout: _no_address(name)
        return http_probe(f"http://{address}:{BACKEND_PORT}")

    def _exited(self, name: str) -> str | None:
        info = self.backend.container(name)
        if info is None:
            return f"{name} disappeared"
        if info.state in ("exited", "dead", "restarting"):
            suffix = " and is restarting" if info.state == "restarting" else ""
            return f"{name} exited with code {info.exit_code}{suffix}"
        if info.restart_count > self.restart_baseline.get(name, info.restart_count):
            return f"{name} crashed and was restarted by the engine"
        return None

    def _gate(self, names: tuple[str, ...], deadline: float, label: str) -> dict[str, GateResult]:
        settings = replace(self.gate, deadline=deadline)
        cancel = threading.Event()
        lines: dict[str, str] = {}
        real_sleep = self.sleep is time.sleep

        def sleep(seconds: float) -> None:
            if real_sleep:
                if cancel.wait(seconds):
                    raise _Cancelled
            else:
                if cancel.is_set():
                    raise _Cancelled
                self.sleep(seconds)

        results: dict[str, GateResult] = {}
        with self.status(f"{label}: waiting until ready") as live:

            def one(name: str) -> GateResult:
                def on_status(text: str) -> None:
                    lines[name] = text
                    live.update(f"{label}: waiting until ready: " + "; ".join(f"{n} {t}" for n, t in sorted(lines.items())))

                try:
                    return wait_ready(self.probe_for(name), settings, exited=lambda: self._exited(name), on_status=on_status, clock=self.clock, sleep=sleep)
                except _Cancelled:
                    return GateResult(False, 0.0, 0, "cancelled: another container failed its gate")

            if len(names) == 1:
                results[names[0]] = one(names[0])
                return results
            pool = ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="gate")
            try:
                futures = {pool.submit(one, n): n for n in names}
                pending = set(futures)
                while pending:
                    finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    for future in finished:
                        result = future.result()
                        results[futures[future]] = result
                        if not result.ready:
                            cancel.set()
            except BaseException:
                cancel.set()
                raise
            finally:
                pool.shutdown(wait=True)
        return results


    def _server_log(self, name: str) -> str:
        """The container's own last log lines. The engine copies a container's output into its log
        asynchronously, so a line printed just before the failure it explains may not be there
        yet: read again for up to a second while nothing is."""
        lines = server_lines(self.backend.logs(name, tail=LOG_SCAN), LOG_LINES)
        for _ in range(10):
            if lines:
                break
            time.sleep(0.1)
            lines = server_lines(self.backend.logs(name, tail=LOG_SCAN), LOG_LINES)
        return lines

    def _gate_or_raise(self, names: tuple[str, ...], deadline: float, label: str) -> None:
        results = self._gate(names, deadline, label)
        now = self.clock()
        for name, result in results.items():
            if result.ready:
                if name in self.started_at:
                    self.execution.ready_seconds[name] = now - self.started_at[name]
                info = self.backend.container(name)
                self.restart_baseline[name] = info.restart_count if info else 0
        failed = {n: r for n, r in results.items() if not r.ready}
        if failed:
            first = sorted(failed, key=lambda n: failed[n].reason.startswith("cancelled"))[0]
            for name in failed:
                self.execution.failed_logs[name] = self._server_log(name)
            reasons = "; ".join(f"{n}: {r.reason}" for n, r in sorted(failed.items()))
            raise GateFailed(
                f"{first} did not become ready: {failed[first].reason}",
                hint=f"the last {LOG_LINES} log lines of the container are shown above; nothing was switched",
                details={"gate": reasons, "logs": dict(self.execution.failed_logs)},
            )

    # -- steps ---------------------------------------------------------------------------------------
    def _do_ensure_network(self, step: EnsureNetwork) -> None:
        from flashfit_ops.plan.common import project_labels

        labels = project_labels(self.config, "network")
        if self.backend.ensure_network(step.name, labels):
            self._register(f"remove network {step.name}", lambda: self.backend.remove_network(step.name))

    def _do_ensure_volume(self, step: EnsureVolume) -> None:
        from flashfit_ops.plan.common import project_labels

        # Never undone: a volume holds data.
        self.backend.ensure_volume(step.name, project_labels(self.config, "volume"))

    def _do_clean_proxy_files(self, step: CleanProxyFiles) -> None:
        self.proxy.clean(step.files)

    def _do_start_container(self, step: StartContainer) -> None:
        name = step.spec.name

        def undo() -> None:
            self.backend.remove(name)
            self.proxy.forget(name)

        self._register(f"remove {name}", undo)
        self.proxy.ensure_folders()  # the sockets folder it bind-mounts, writable by its user
        self.backend.create_backend(step.spec, self.secrets)
        # Boot-to-ready counts from the start request: the runtime's setup is part of booting.
        self.started_at[name] = self.clock()
        self.backend.start(name)
        self.restart_baseline[name] = 0

    def _do_restart_container(self, step: RestartContainer) -> None:
        self._join_stop(step.name)
        self._register(f"stop {step.name} again", lambda: self.backend.stop(step.name))
        self.proxy.ensure_folders()
        self.backend.start(step.name)
        self.started_at[step.name] = self.clock()
        info = self.backend.container(step.name)
        self.restart_baseline[step.name] = info.restart_count if info else 0

    def _do_wait_ready(self, step: WaitReady) -> None:
        self._gate_or_raise(step.names, step.deadline, "gate")

    def _do_ensure_proxy(self, step: EnsureProxy) -> None:
        name = step.spec.name
        info = self.backend.container(name)
        legacy = info is not None and SOCKET_DIR not in info.mount_targets
        if info is not None and info.state == "running" and not legacy:
            applied = read_files(self.proxy.folder, self.proxy.sockets).applied
            if tuple(applied) != tuple(step.slots):
                self._switch(step.slots, tuple(applied), slot_count=step.slot_count)
            return
        if info is not None:
            self.backend.remove(name)  # stopped or broken: recreated from the current settings
        self.proxy.write_live(step.slots, step.slot_count)
        self._register(f"remove proxy {name}", lambda: self.backend.remove(name))
        self.backend.run_proxy(step.spec)
        self.proxy.wait_serving()
        self.proxy.record_applied(step.slots)
        self.switched_at = self.clock()

    def _versions(self, names: tuple[str, ...]) -> dict[str, str]:
        out = {}
        for name in dict.fromkeys(names):
            info = self.backend.container(name)
            version = (info.labels or {}).get(LABEL_VERSION) if info is not None else None
            if version:
                out[name] = version
        return out

    def _switch_to(self, slots: tuple[str, ...], *, slot_count: int = 0, standby: tuple[str, ...] = (), planned_reload: str = "") -> None:
        before = getattr(self.proxy, "reloads", 0)
        self.proxy.switch(tuple(slots), self._versions(slots), slot_count=slot_count, standby=tuple(standby))
        reloads = getattr(self.proxy, "reloads", 0) - before
        self.execution.reloads += reloads
        if reloads and not planned_reload:
            text = "nginx was reloaded although the plan named no reload (nginx.conf on disk differed from the rendered one)"
            self.execution.warnings.append(text)
            self.say("warn", text)

    def _switch(
        self, slots: tuple[str, ...], previous: tuple[str, ...], *, slot_count: int = 0, standby: tuple[str, ...] = (), reload: str = ""
    ) -> None:
        if previous and tuple(previous) != tuple(slots):
            # Back means every slot, the standby ones too, on the previous containers: those
            # that stay running through the monitor window take the traffic again at once.
            self._register(
                f"switch traffic back to {', '.join(previous)}", lambda: self._switch_to(tuple(previous), slot_count=slot_count, planned_reload="undo")
            )
        self._switch_to(tuple(slots), slot_count=slot_count, standby=standby, planned_reload=reload)
        self.switched_at = self.clock()

    def _do_switch_upstreams(self, step: SwitchUpstreams) -> None:
        self._switch(step.slots, step.previous, slot_count=step.slot_count, standby=step.standby, reload=step.reload)

    def _do_release_standby(self, step: ReleaseStandby) -> None:
        # Undone by the switch's own undo, which points every slot back at the previous version.
        self.proxy.link_standby(step.names, self.proxy.current_count())

    def _drain_one(self, name: str, timeout: float) -> None:
        """SIGTERM, then the server finishes its in-flight requests and exits (the engine kills it
        after `timeout`). No slot points at it any more, so nothing new arrives meanwhile."""
        started = self.clock()
        self.backend.stop(name, timeout=timeout)
        seconds = self.clock() - started
        self.execution.drain_seconds[name] = seconds
        info = self.backend.container(name)
        if info is not None and info.exit_code == 137 and seconds >= timeout:
            text = f"{name} did not finish its requests within the {timeout:g}s drain timeout and was killed"
            self.execution.warnings.append(text)
            self.say("warn", text)

    def _do_drain(self, step: Drain) -> None:
        # In the background, like every stop: the drain overlaps the next batch and the monitor
        # window; anything that touches the container again, and the end of the plan, wait for it.
        for name in step.names:
            self._register_stop_undo(name)
            self._stops[name] = self._stopper().submit(self._drain_one, name, step.timeout)

    def _stopper(self) -> ThreadPoolExecutor:
        assert self._stop_pool is not None, "stops run only inside run(), which owns the pool"
        return self._stop_pool

    def _register_stop_undo(self, name: str) -> None:
        def undo() -> None:
            self._join_stop(name)
            self.backend.start(name)
            self._gate_or_raise((name,), self.config.deploy.deadline, "restore")

        self._register(f"start {name} again", undo)

    def _do_stop_container(self, step: StopContainer) -> None:
        self._register_stop_undo(step.name)
        self._stops[step.name] = self._stopper().submit(self.backend.stop, step.name, timeout=step.timeout)

    def _do_remove_container(self, step: RemoveContainer) -> None:
        self._join_stop(step.name)
        try:
            self.backend.remove(step.name)
            self.proxy.forget(step.name)
        except FlashFitError as error:  # a leftover that will not go is not worth a rollback
            self.execution.warnings.append(f"could not remove {step.name}: {error.message}")
            self.say("warn", f"could not remove {step.name}: {error.message}")

    def _do_monitor(self, step: Monitor) -> None:
        end = (self.switched_at if self.switched_at is not None else self.clock()) + step.window
        with self.status(f"monitoring {', '.join(step.names)}") as live:
            while True:
                for name in step.names:
                    problem = self._exited(name)
                    if problem:
                        self.execution.failed_logs[name] = self._server_log(name)
                        raise DiedAfterSwitch(
                            f"{problem} within the {step.window:g}s monitor window after the switch",
                            hint=f"the last {LOG_LINES} log lines are shown above; traffic went back to the previous version",
                            details={"logs": dict(self.execution.failed_logs)},
                        )
                remaining = end - self.clock()
                if remaining <= 0:
                    return
                live.update(f"monitoring {', '.join(step.names)}: {remaining:.1f}s left")
                self.sleep(min(MONITOR_POLL, remaining))


def _no_address(name: str) -> ProbeResult:
    return ProbeResult(False, None, f"{name} has no address on the project network")


def _console_say(kind: str, message: str) -> None:
    {"step": console.step, "warn": console.warn, "success": console.success}.get(kind, console.info)(message)
