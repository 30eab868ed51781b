"""Progress of a loop of long steps (a sweep's chunks) on stderr: a bar on a terminal, plain log
lines otherwise. Compile time is reported on its own and left out of the ETA."""

import sys
import threading
import time

HEARTBEAT_SECONDS = 1.0  # how often a terminal bar's clock is redrawn during a long step
LOG_EVERY_SECONDS = 30.0  # at most this long without a log line while a step runs


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return (
        f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
    )


class Progress:
    """Reports ``total`` steps, of which ``done`` were finished before (resumed).

    ``show``: True from the start, False never, None once the loop has run ``delay`` seconds
    (so quick loops stay silent). On a terminal ``file`` shows a tqdm bar whose clock keeps
    running during a long step; elsewhere (a log file, a batch job) it writes one plain line per
    finished step (at most one per ``min_interval`` seconds, and always the last) and a "still
    running" line when a step takes longer than ``LOG_EVERY_SECONDS``. Used as a context
    manager; `step_done` after each computed step, with the compile seconds it included.
    ``clock`` (seconds) is replaceable for tests."""

    def __init__(
        self,
        total: int,
        *,
        desc: str,
        unit: str = "chunk",
        done: int = 0,
        show: bool | None = None,
        delay: float = 3.0,
        min_interval: float = 5.0,
        file=None,
        clock=time.perf_counter,
    ):
        self.total, self.desc, self.unit, self.done = total, desc, unit, done
        self.resumed = done
        self.file = sys.stderr if file is None else file
        self.enabled = show is not False
        self.delay = 0.0 if show else delay
        self.min_interval = min_interval
        self.clock = clock
        self.terminal = bool(getattr(self.file, "isatty", lambda: False)())
        self.compile_seconds = 0.0
        self.step_seconds = 0.0  # computed steps' wall time, compile excluded
        self.computed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._start = self._last_line = clock()
        self._step_start = self._start
        self._visible = False
        self._bar = None
        self._thread = None

    # -------------------------------------------------------------------- public

    def __enter__(self) -> "Progress":
        if not self.enabled:
            return self
        self._start = self._step_start = self.clock()
        if self.terminal:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.total,
                initial=self.done,
                desc=self.desc,
                unit=self.unit,
                file=self.file,
                delay=self.delay,
                mininterval=0.0,  # steps are long: draw every one
                miniters=1,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} {unit}s [{elapsed}{postfix}]",
            )
        if self.delay == 0:
            self._show()
        self._thread = threading.Thread(target=self._heartbeat, daemon=True)
        self._thread.start()
        return self

    def step_done(self, compile_seconds: float = 0.0):
        """One more step finished; ``compile_seconds`` of its wall time went to compiling."""
        if not self.enabled:
            return
        now = self.clock()
        with self._lock:
            self.compile_seconds += compile_seconds
            self.step_seconds += max(now - self._step_start - compile_seconds, 0.0)
            self.computed += 1
            self.done += 1
            self._step_start = now
            if self._bar is not None:
                self._bar.set_postfix_str(self._status(), refresh=False)
                self._bar.update()
            elif self._visible and (self._due(now) or self.done == self.total):
                status = self._status()
                self._log(
                    f"{self.unit} {self.done}/{self.total} done" + (status and f"; {status}")
                )

    def start(self) -> "Progress":
        """Start reporting (what ``with`` does); end with `close`."""
        return self.__enter__()

    def update(self):
        """One more step finished (`step_done` without compile time)."""
        self.step_done()

    def close(self):
        self.__exit__(None, None, None)

    def eta(self) -> float | None:
        """Seconds left at the mean computed step's run time (compile excluded); None before
        a step was computed."""
        if self.computed == 0:
            return None
        return self.step_seconds / self.computed * (self.total - self.done)

    def __exit__(self, kind, value, traceback):
        if not self.enabled:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if self._bar is not None:
                self._bar.close()
            elif self._visible and kind is None:
                compiled = (
                    f", compile {self.compile_seconds:.1f} s" if self.compile_seconds else ""
                )
                self._log(
                    f"finished: {self.computed} {self.unit}s computed, {self.resumed} resumed"
                    + compiled
                )

    # -------------------------------------------------------------------- internals

    def _status(self) -> str:
        parts = []
        if self.compile_seconds:
            parts.append(f"compile {self.compile_seconds:.1f} s")
        eta = self.eta()
        if eta is not None and self.done < self.total:
            parts.append(f"ETA {_clock(eta)}")
        return ", ".join(parts)

    def _due(self, now: float) -> bool:
        return self._visible and now - self._last_line >= self.min_interval

    def _log(self, text: str):
        self._visible = True
        self._last_line = self.clock()
        elapsed = _clock(self._last_line - self._start)
        print(f"{self.desc}: {text} [elapsed {elapsed}]", file=self.file, flush=True)

    def _show(self):
        """Start showing: a terminal bar draws itself; a log gets its first line."""
        if self._bar is None and not self._visible:
            resumed = f", {self.resumed} resumed" if self.resumed else ""
            self._log(
                f"{self.total} {self.unit}{'s' if self.total != 1 else ''}{resumed}; "
                f"running {self.unit} {self.done + 1}"
            )
        self._visible = True

    def _heartbeat(self):
        while not self._stop.wait(HEARTBEAT_SECONDS):
            now = self.clock()
            with self._lock:
                if now - self._start < self.delay:
                    continue
                if self._bar is not None:
                    self._bar.refresh()
                elif not self._visible:
                    self._show()
                elif now - self._last_line >= LOG_EVERY_SECONDS:
                    running = f"{self.unit} {min(self.done + 1, self.total)}/{self.total}"
                    self._log(f"{running} still running ({_clock(now - self._step_start)})")
