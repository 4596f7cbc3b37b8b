"""What travels between the daemon's threads: received events and their replies.

Times are ``time.perf_counter()`` seconds of this process.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from streamtrk.event import Event, Tracks
from streamtrk.wire import ModelId

NO_HITS = np.zeros(0, dtype=np.int64)


@dataclass(eq=False)
class Job:
    """A decoded event waiting for reconstruction (its arrays view the received frames)."""

    event: Event
    t_recv: float
    deadline: float | None  # answer ``deadline`` instead of processing after this time
    timings: dict[str, float] = field(default_factory=dict)
    msg_id: int | None = None  # the sender's identity of the message, echoed in the reply
    t_queued: float = 0.0
    _claim: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def n_hits(self) -> int:
        return len(self.event.hits)

    def claim(self) -> bool:
        """True for the first caller only: whoever claims a job sends its one reply (the
        worker, or the drain answering ``shutdown`` when the worker overruns)."""
        return self._claim.acquire(blocking=False)

    @property
    def claimed(self) -> bool:
        """Whether its reply is claimed (sent or on its way)."""
        return self._claim.locked()


@dataclass(eq=False)
class Reply:
    """One answer to send: tracks on success, a reason on error."""

    run: int
    event: int
    t_recv: float
    timings: dict[str, float]
    hit_ids: np.ndarray = field(default_factory=lambda: NO_HITS)
    tracks: Tracks | None = None
    reason: str = ""
    msg_id: int | None = None
    beam_line: tuple[float, float] | None = None  # mm: what the tracks' perigee is about
    model: ModelId | None = None  # the model that made the tracks

    @property
    def status(self) -> str:
        return "error" if self.reason else "ok"

    @classmethod
    def success(
        cls,
        job: Job,
        tracks: Tracks,
        timings: dict[str, float],
        beam_line: tuple[float, float],
        model: ModelId | None,
    ) -> Reply:
        ev = job.event
        return cls(
            ev.run,
            ev.event,
            job.t_recv,
            timings,
            ev.hits.hit_id,
            tracks,
            "",
            job.msg_id,
            beam_line,
            model,
        )

    @classmethod
    def failure(cls, job: Job, reason: str) -> Reply:
        ev = job.event
        return cls(
            ev.run, ev.event, job.t_recv, dict(job.timings), reason=reason, msg_id=job.msg_id
        )
