"""Replay a recording through the daemon and report throughput, latency and physics.

A sender thread pushes the recording's ``hits`` messages as recorded (the frames of
``iter_records``, or re-encoded with ``compact``; only the header gains a ``msg_id`` of its
own for each event, which its resends carry too), at a fixed rate or as fast as the daemon
takes them, meanwhile and after the last, with ``retries``, resends those still
unanswered ``retry_after_s`` after their last send, the newest first (libzmq drops what
was queued behind a frame over the daemon's size limit, with the connection: an event lost
that way goes out ahead of that frame on the resend), once it looks lost rather than
queued: an event sent after it has been answered since, or no reply at all has come for
``retry_after_s`` (a slow farm's queues could otherwise hold every event past
``retry_after_s`` and draw every resend); the calling thread receives the
replies and matches them to the sends by ``msg_id`` (a reply without one is
``unexpected``, another producer's; with ``match_by_event``, the oldest unanswered send of
the same (run, event)), so every event counts once: a second reply to the same message (or,
with ``match_by_event`` and no id, to an answered event) is counted as a duplicate; once every
event has its reply, the replies still due to resends are awaited (until none comes for
``retry_after_s``; replies to other replays do not count) to be counted so. An event
answered ``shutdown`` (a daemon stopped with it unprocessed: in a farm another daemon can
take it) that has resends left is sent again at once, and counts by the reply to that (the
``shutdown`` reply in ``shutdown_resent``), as one with a resend already out counts by the
reply to that; its ``shutdown`` reply is its answer only when no resend is left or out, or
none answered (then within ``timeout_s``: after that silence no late reply is awaited).
Ctrl-C stops the replay; the report then covers the
replies received so far. Latency runs from just before an event's first send to its reply.
``truth`` messages are not sent: they score the replies (tracking efficiency, fake and
duplicate rates, TrackML score).

A connecting replay whose handshake the daemon refuses (a CURVE key it does not allow, or
CURVE on one side only) stops at once and reports which socket was refused and why
(``refused``): libzmq does not try that connection again, so nothing would get through.
CURVE handshakes hung up on (another server key than the daemon's, or a proxy that cannot
reach it yet), which libzmq tries again, are counted (``handshakes_hung_up``).
"""

from __future__ import annotations

import math
import random
import sys
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import chain, repeat
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from streamtrk.client import REFUSAL_EVENTS, Consumer, Producer, SocketSettings
from streamtrk.errors import SettingError
from streamtrk.eval.score import PhysicsTotals
from streamtrk.event import Event
from streamtrk.io.paths import save_png
from streamtrk.io.recording import RecordingError, TruthPairs, iter_records
from streamtrk.stop import Stop, StopFlag
from streamtrk.wire import Message, TrackReply, WireError, decode, encode_hits, with_msg_id

Key = tuple[int, int]


@dataclass(eq=False)
class Recorded:
    """One recorded event: its raw hits frames, and the decoded event (truth if any)."""

    frames: list[bytes]
    event: Event

    @property
    def key(self) -> Key:
        return self.event.run, self.event.event


def load_recording(
    path: str | Path, limit: int | None = None, *, compact: bool = False
) -> list[Recorded]:
    """The ``hits`` records of ``path`` (at most ``limit``), each with the truth of a
    ``truth`` record of the same event that follows it (paired as
    :class:`~streamtrk.io.recording.TruthPairs` pairs them: past the limit, read until the
    last event kept has its truth or has left the pairing window, as a reader of the whole
    file would pair it); ``tracks`` records are skipped.
    ``compact``: each hits message re-encoded compact (wire version 5; header fields kept),
    else as recorded. A record that does not decode, or a truth that does not fit its event,
    is a RecordingError naming the file and the record's offset (``record`` stores only
    valid messages: such a record is damage)."""
    out: list[Recorded] = []
    pairs: TruthPairs[Recorded | None] = TruthPairs()  # None: a hits record past the limit
    handed = 0  # of ``out``, paired or past the window
    for offset, frames in iter_records(path):
        try:
            msg = decode(frames)
            if msg.kind == "hits" and limit is not None and len(out) >= limit:
                pairs.hits((msg.run, msg.event), None)  # counts towards the window only
            elif msg.kind == "hits":
                event = msg.to_event()
                if compact:
                    again = encode_hits(
                        event,
                        t_send_ns=msg.t_send_ns,
                        deadline_ms=msg.deadline_ms,
                        msg_id=msg.msg_id,
                        compact=True,
                    )
                    frames = [bytes(f) for f in again]
                out.append(Recorded(frames, event))
                pairs.hits(out[-1].key, out[-1])
            elif msg.kind == "truth":
                pairs.truth((msg.run, msg.event), partial(_with_truth, msg=msg))
        except ValueError as e:  # WireError, or a truth of another length than its hits
            raise RecordingError(f"{path}: record at offset {offset}: {e}") from e
        handed += sum(rec is not None for rec in pairs.ready())  # in ``out`` already
        if handed == limit:
            break
    return out


def _with_truth(rec: Recorded | None, msg: Message) -> Recorded | None:
    if rec is not None:
        rec.event = Event(rec.event.run, rec.event.event, rec.event.hits, msg.to_truth())
    return rec


@dataclass
class ReplayOptions:
    """Where to send and receive, how fast, how often, how long to wait for replies, how
    often to resend an event without one, and the CURVE certificates (client side)."""

    to: str = "tcp://127.0.0.1:5555"
    from_: str = "tcp://127.0.0.1:5556"
    bind: bool = False  # bind both sockets (for daemons in connect mode)
    rate: float | None = None  # events per second; None: as fast as the daemon accepts
    loop: int = 1
    timeout_s: float = 30.0
    hwm: int = 100
    progress: bool = False
    retries: int = 0  # resends of an event still without a reply after retry_after_s
    retry_after_s: float = 5.0
    curve_key: Path | None = None  # own secret certificate
    curve_server_key: Path | None = None  # the daemon's public certificate
    # Replies without a msg_id answer the oldest send of their (run, event): for a daemon
    # that echoes none. Else they are another producer's (every send carries one).
    match_by_event: bool = False

    def __post_init__(self) -> None:
        """ValueError naming the first setting out of range, by its flag."""
        positive = "a positive number"
        checks = [
            ("--loop", self.loop, 1 <= self.loop <= sys.maxsize, f"1 to {sys.maxsize}"),
            ("--rate", self.rate, self.rate is None or 0 < self.rate < math.inf, positive),
            ("--timeout", self.timeout_s, 0 < self.timeout_s < math.inf, positive),
            ("--retries", self.retries, self.retries >= 0, "0 or more"),
            ("--retry-after", self.retry_after_s, 0 < self.retry_after_s < math.inf, positive),
        ]
        for flag, value, ok, rule in checks:  # a NaN fails every comparison: refused too
            if not ok:
                raise SettingError(f"{flag} must be {rule}, got {value}")


@dataclass
class ReplayResult:
    """Raw outcome of a replay; :meth:`report` turns it into the report dict."""

    sent: int = 0
    unsent: int = 0
    send_error: str | None = None  # why sending stopped early (a socket failure)
    refused: dict[str, str] = field(default_factory=dict)  # socket (to, from): REFUSAL_HINTS
    # socket (to, from): its CURVE handshakes hung up on, none succeeding (HUNG_UP_HINT)
    hung_up: dict[str, int] = field(default_factory=dict)
    resent: int = 0
    latencies: array[float] = field(default_factory=lambda: array("d"))  # 8 bytes a reply
    # With a rate: from the time each event was due on the schedule (see _Sender), and the
    # most a first send came after that time (the daemon took nothing meanwhile).
    schedule_latencies: array[float] = field(default_factory=lambda: array("d"))
    send_lag_max: float = 0.0
    other_event_replies: int = 0  # their msg_id one event's, their (run, event) another's
    errors: Counter[str] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)  # ok replies by the model named
    unexpected: int = 0
    unexpected_without_msg_id: int = 0  # of them: a producer's that sets none, or a daemon
    duplicates: int = 0
    shutdown_resent: int = 0  # 'shutdown' replies set aside: their event resent, or a resend out
    invalid_replies: int = 0
    invalid_reply_reasons: Counter[str] = field(default_factory=Counter)  # the decoder's codes
    first_invalid_reply: str = ""  # the decoder's words for the first (a newer version's?)
    # Per event, the reply its physics is scored by: its first ok reply, else its first.
    scored_replies: dict[Key, Message] = field(default_factory=dict)
    t_first_send: float = 0.0
    t_last_first_send: float = 0.0  # of a new event (resends move t_last_send only)
    t_last_send: float = 0.0
    t_last_reply: float = 0.0
    interrupted: bool = False  # stopped early (Ctrl-C, SIGTERM): the report covers what came

    @property
    def received(self) -> int:
        return len(self.latencies)

    def report(
        self,
        events: list[Recorded],
        rate: float | None,
        labels: dict[Key, np.ndarray | None] | None = None,
    ) -> dict[str, Any]:
        """The report; ``labels``: :func:`labels_of` the scored replies, when made already."""
        lat_ms = np.asarray(self.latencies) * 1000
        labels = labels_of(events, self.scored_replies) if labels is None else labels
        # Nothing sent: no span (the first send was tried, and timed out or was stopped).
        span = max(self.t_last_reply, self.t_last_send) - self.t_first_send if self.sent else 0.0
        send_span = self.t_last_first_send - self.t_first_send

        def pct(q: float, ms: np.ndarray = lat_ms) -> float | None:
            return float(np.percentile(ms, q)) if len(ms) else None

        due_ms = np.asarray(self.schedule_latencies) * 1000

        out: dict[str, Any] = {
            "sent": self.sent,
            "received": self.received,
            "missing": self.sent - self.received,
            "ok": self.received - sum(self.errors.values()),
            "errors": dict(sorted(self.errors.items())),
            "unsent": self.unsent,
            "send_error": self.send_error,
            "refused": dict(self.refused),
            "handshakes_hung_up": dict(self.hung_up),
            "resent": self.resent,
            "shutdown_resent": self.shutdown_resent,
            "duplicates": self.duplicates,
            "unexpected": self.unexpected,
            "unexpected_without_msg_id": self.unexpected_without_msg_id,
            "invalid_replies": self.invalid_replies,
            "invalid_reply_reasons": dict(sorted(self.invalid_reply_reasons.items())),
            "first_invalid_reply": self.first_invalid_reply or None,
            "interrupted": self.interrupted,
            "duration_s": span,
            "events_per_second": self.received / span if span > 0 else None,
            "offered_rate_hz": rate,
            "send_rate_hz": (self.sent - 1) / send_span if send_span > 0 else None,
            "latency_p50_ms": pct(50),
            "latency_p90_ms": pct(90),
            "latency_p99_ms": pct(99),
            "latency_max_ms": float(lat_ms.max()) if len(lat_ms) else None,
            "latency_mean_ms": float(lat_ms.mean()) if len(lat_ms) else None,
            "latency_from_schedule_p50_ms": pct(50, due_ms),
            "latency_from_schedule_p99_ms": pct(99, due_ms),
            "latency_from_schedule_max_ms": float(due_ms.max()) if len(due_ms) else None,
            "send_lag_max_ms": self.send_lag_max * 1000 if rate and self.sent else None,
            "beam_lines_mm": beam_lines(self.scored_replies),
            "models": dict(sorted(self.models.items())),
            "mismatched_replies": sum(v is None for v in labels.values())
            + self.other_event_replies,
            "ambiguous_events": len(ambiguous_keys(events)),
        }
        return out | physics(events, self.scored_replies, labels)


RESEND_POLL_S = 0.05
#: A send's message id: a random prefix of this replay above the count of its sends, which
#: has room for 2**39 (8.7 years at 2,000 events a second).
ID_COUNT_BITS = 39


def due_newest_first(
    sends: list[_Send], now: float, retry_after_s: float, answered_seq: int, quiet_since: float
) -> list[_Send]:
    """The sends due for a resend at ``now``, the last sent first (see the module
    docstring): ``retry_after_s`` or more past their last send, and either last sent
    before the first send of an event answered since (``answered_seq``) or with no reply
    of any kind for ``retry_after_s`` (since ``quiet_since``); and those whose ``shutdown``
    reply was set aside (due at once)."""
    quiet = now - quiet_since >= retry_after_s
    due = [
        p
        for p in sends
        if p.t_last == -math.inf
        or (now - p.t_last >= retry_after_s and (quiet or p.seq < answered_seq))
    ]
    return sorted(due, key=lambda p: p.t_last, reverse=True)


@dataclass(eq=False)
class _Send:
    """One event sent (pending under its message id): its key, frames, first and last send
    times (a resend's once ZeroMQ took it), the time it was due (with a rate), the numbers
    among the replay's sends of its first send (``first_seq``) and of its last (``seq``),
    sends so far, whether a reply came, and the last ``shutdown`` reply set aside for a
    resend (with its arrival time) and how many were."""

    key: Key
    frames: list[Any]
    t_first: float
    t_last: float
    t_due: float | None = None  # on the schedule, with a rate (the first: its send)
    seq: int = 0
    first_seq: int = 0
    sends: int = 1
    answered: bool = False
    shutdown: tuple[float, Message] | None = None
    set_aside: int = 0


class _Sender(threading.Thread):
    """Sends every event with a message id of its own (the id prefix is random, so a reply
    to another replay sharing a collector is told apart: ``unexpected``; the collector hands
    each reply to one of its consumers in turn, so such replays miss about half of their
    own), paced at ``rate`` when given; meanwhile, and after the last, resends those still
    unanswered ``retry_after_s`` after their last send that look lost
    (:func:`due_newest_first`). A send's id is pending until answered: the ids sent and no
    longer pending are the answered ones (no record of each is kept: a ``--loop`` may run
    for days)."""

    def __init__(
        self, producer: Producer, events: list[Recorded], opts: ReplayOptions, result: ReplayResult
    ) -> None:
        super().__init__(name="replay-send", daemon=True)
        self.producer, self.events, self.opts, self.result = producer, events, opts, result
        self.pending: dict[int, _Send] = {}
        self.answered_keys: set[Key] = set()  # for replies that do not echo the msg_id
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.prefix = random.getrandbits(63 - ID_COUNT_BITS) << ID_COUNT_BITS
        self.next_id = self.prefix  # the ids from the prefix up to this one went out
        self._next_check = 0.0  # when resends are next looked for
        self.seq = 0  # sends and resends taken by ZeroMQ so far
        # The largest first_seq of an event answered (0: none yet): a reply may be to any of
        # an event's sends, so its first is the latest it surely answers.
        self.answered_seq = 0
        self.t_reply = -math.inf  # when the last reply to one of ours came

    def run(self) -> None:
        total = len(self.events) * self.opts.loop
        try:
            self._send_all(total)
        except Exception as e:  # the socket failed: what is left is unsent, and said why
            self.result.unsent = total - self.result.sent
            self.result.send_error = f"{type(e).__name__}: {e}"

    def _send_all(self, total: int) -> None:
        """Send the events ``loop`` times over, taken as they go (a long ``--loop`` holds no
        list of its sends)."""
        r, rate = self.result, self.opts.rate
        order = chain.from_iterable(repeat(self.events, self.opts.loop))
        t0: float | None = None  # the schedule's start: the first send, once it had room
        for i, ev in enumerate(order):
            due = None if t0 is None or rate is None else t0 + i / rate
            while due is not None and (wait := due - time.perf_counter()) > 0:
                if self.stop.wait(min(wait, RESEND_POLL_S)):
                    break
                self._resend_due()
            self._resend_due()
            if self.stop.is_set() or (i == 0 and not self._room()):
                r.unsent = total - i
                return
            msg_id = self.prefix | i
            frames = with_msg_id(ev.frames, msg_id)
            t = time.perf_counter()
            sent = _Send(ev.key, frames, t, t, t if due is None and rate else due)
            with self.lock:
                self.pending[msg_id] = sent
                self.next_id = msg_id + 1
                r.t_first_send = r.t_first_send or t
            if not self._send(frames):
                with self.lock:
                    del self.pending[msg_id]
                    self.next_id = msg_id
                r.unsent = total - i
                return
            self._taken(sent, first=True)
            if due is not None:  # how late it went out, the wait for room included
                r.send_lag_max = max(r.send_lag_max, time.perf_counter() - due)
            t0 = t if t0 is None else t0  # the first, sent as a daemon had room: the start
            r.sent += 1
            r.t_last_send = r.t_last_first_send = t
        while not self.stop.wait(RESEND_POLL_S) and self._resend_due():
            pass

    def _room(self) -> bool:
        """Wait, within the timeout, until the socket can take a message (bound, until a
        daemon connects), so that the first send's time and the schedule start then;
        False after the timeout or once stopped."""
        return self._within_timeout(lambda ms: bool(self.producer.socket.poll(ms, zmq.POLLOUT)))

    def _send(self, frames: list[Any]) -> bool:
        """Send ``frames`` within the timeout, waiting for a daemon that takes nothing;
        False after the timeout or once stopped (Ctrl-C is not held up by a full or absent
        daemon)."""
        return self._within_timeout(lambda ms: self.producer.send_frames(frames, timeout_ms=ms))

    def _within_timeout(self, attempt: Callable[[int], bool]) -> bool:
        """``attempt(ms)``, waiting up to ``ms`` milliseconds, in slices of
        ``RESEND_POLL_S`` until it succeeds (True), the timeout passes or a stop (False)."""
        deadline = time.perf_counter() + self.opts.timeout_s
        while not self.stop.is_set():
            left = deadline - time.perf_counter()
            if attempt(max(0, int(1000 * min(left, RESEND_POLL_S)))):
                return True
            if left <= 0:
                return False
        return False

    def _taken(self, p: _Send, first: bool = False, set_aside: int = 0) -> float:
        """``p`` just taken by ZeroMQ: its send's number and, for a resend (``set_aside``: its
        count of ``shutdown`` replies set aside when it went), its time; when it was taken. A
        ``shutdown`` reply set aside meanwhile, which makes it due at once, is kept (a first
        send's time is when it was made)."""
        self.seq += 1
        t = time.perf_counter()
        with self.lock:
            p.seq = self.seq
            if first:
                p.first_seq = self.seq
            elif p.set_aside == set_aside:
                p.t_last = t
        return t

    def _resend_due(self) -> bool:
        """Resend (once each, newest first) what is due (:func:`due_newest_first`) and has
        resends left; at most every ``RESEND_POLL_S``. False
        once nothing is left to resend, or a send timed out."""
        opts, now = self.opts, time.perf_counter()
        if opts.retries == 0 or now < self._next_check:
            return opts.retries > 0
        self._next_check = now + RESEND_POLL_S
        with self.lock:
            todo = [p for p in self.pending.values() if p.sends <= opts.retries]
            answered_seq = self.answered_seq
            quiet_since = max(self.t_reply, self.result.t_first_send)
        for p in due_newest_first(todo, now, opts.retry_after_s, answered_seq, quiet_since):
            if p.answered:  # its reply came while the resends before it went out
                continue
            with self.lock:  # counted before it goes: a reply to it may come before _taken
                p.sends += 1
                set_aside = p.set_aside
            if not self._send(p.frames):
                with self.lock:
                    p.sends -= 1
                return False
            self.result.t_last_send = self._taken(p, set_aside=set_aside)
            self.result.resent += 1
        return bool(todo)

    def set_aside(self, msg_id: int | None, key: Key, t: float, msg: Message) -> bool:
        """Whether the ``shutdown`` reply ``msg`` (arrived at ``t``) is set aside: so while
        the event is unanswered and either has resends left while this thread still sends
        (it is resent at once) or has a send out that no reply has come for yet (a resend
        already made). The reply is kept in case no other comes
        (:meth:`unanswered_shutdowns`)."""
        with self.lock:
            if msg_id is None and self.opts.match_by_event:
                msg_id = min((m for m, p in self.pending.items() if p.key == key), default=None)
            p = None if msg_id is None else self.pending.get(msg_id)
            if p is None:
                return False
            out = p.sends - 1 - p.set_aside  # sends this reply and those before are not for
            if (p.sends > self.opts.retries or not self.is_alive()) and out <= 0:
                return False
            self.t_reply = max(self.t_reply, t)
            p.shutdown = (t, msg)
            p.set_aside += 1
            p.t_last = -math.inf  # due now
            self._next_check = 0.0
            self.result.shutdown_resent += 1
            return True

    def unanswered_shutdowns(self) -> list[tuple[_Send, float, Message]]:
        """The sends still unanswered whose ``shutdown`` reply was set aside, answered by it
        now (no other reply came), with its arrival time."""
        with self.lock:
            held = [(m, p) for m, p in self.pending.items() if p.shutdown is not None]
            for msg_id, p in held:
                del self.pending[msg_id]
                p.answered = True
                self.answered_keys.add(p.key)
        return [(p, *p.shutdown) for _, p in held if p.shutdown is not None]

    def match(self, msg_id: int | None, key: Key) -> _Send | None:
        """The send this reply answers; None for a reply to a message already answered (a
        duplicate: counted) or to none of ours (one without a msg_id among them, unless
        ``match_by_event``)."""
        with self.lock:
            if msg_id is None and not self.opts.match_by_event:
                self.result.unexpected += 1
                self.result.unexpected_without_msg_id += 1
                return None
            if msg_id is None:  # a daemon that does not echo ids: the oldest send of key
                msg_id = min((m for m, p in self.pending.items() if p.key == key), default=None)
                answered = key in self.answered_keys
            else:  # sent, and not pending (below)
                answered = self.prefix <= msg_id < self.next_id
            sent = None if msg_id is None else self.pending.pop(msg_id, None)
            if msg_id is None or sent is None:
                if answered:
                    self.result.duplicates += 1
                    self.t_reply = time.perf_counter()
                else:
                    self.result.unexpected += 1
                return None
            self.t_reply = time.perf_counter()
            self.answered_seq = max(self.answered_seq, sent.first_seq)
            sent.answered = True
            self.answered_keys.add(sent.key)
            return sent


def replay(
    events: list[Recorded],
    opts: ReplayOptions,
    stop: Stop | None = None,
    bound: Callable[[str, str], None] | None = None,
) -> ReplayResult:
    """Send ``events`` (``opts.loop`` times over) and collect the replies, one per event
    (resends' duplicates are counted, not reported twice). Setting ``stop`` (a signal
    handler's, as the CLI's) or Ctrl-C ends it early, ``interrupted``, with what came so far.
    With ``opts.bind``, ``bound`` is told the endpoints bound (``to``, ``from``; the real
    port of ``:*``) before anything is sent."""
    from tqdm import tqdm

    stop = StopFlag() if stop is None else stop
    result = ReplayResult()
    total = len(events) * opts.loop
    both: SocketSettings = {
        "bind": opts.bind,
        "linger_ms": 0,
        "curve_key": opts.curve_key,
        "curve_server_key": opts.curve_server_key,
        "monitor_events": 0 if opts.bind else REFUSAL_EVENTS,
    }
    with (
        Consumer(opts.from_, rcvhwm=opts.hwm, **both) as consumer,
        Producer(opts.to, sndhwm=opts.hwm, **both) as producer,
    ):
        sockets: dict[str, Producer | Consumer] = {"to": producer, "from": consumer}
        if opts.bind and bound is not None:
            bound(producer.endpoint, consumer.endpoint)
        sender = _Sender(producer, events, opts, result)
        bar = tqdm(total=total, desc="replay", unit="event", disable=not opts.progress)
        sender.start()
        timed_out = False
        try:
            while (sender.is_alive() or result.received < result.sent) and not stop.is_set():
                if _refused(sockets, result):
                    break
                last = max(result.t_last_send, result.t_last_reply)
                if not sender.is_alive() and time.perf_counter() - last > opts.timeout_s:
                    timed_out = True
                    break
                frames = consumer.recv_frames(timeout_ms=100)
                if frames is not None:
                    _receive(frames, sender, result)
                    bar.update(result.received - bar.n)
        except KeyboardInterrupt:  # Ctrl-C where no handler sets stop
            stop.set()
        finally:
            sender.stop.set()
            sender.join()
            bar.close()
        for sent, t, msg in sender.unanswered_shutdowns():  # no resend was answered
            result.shutdown_resent -= 1
            _count(msg, msg.to_reply(), sent, t, result)
        if not (timed_out or result.refused):  # after a silence or a refusal none will come
            try:
                _late_replies(consumer, sender, result, opts.retry_after_s, stop)
            except KeyboardInterrupt:
                stop.set()
        _refused(sockets, result)  # the monitors read to the end
        result.hung_up = {k: p.hung_up for k, p in sockets.items() if p.hung_up and not p.shook}
    result.interrupted = stop.is_set()  # stop sending, report what came
    return result


def _late_replies(
    consumer: Consumer, sender: _Sender, result: ReplayResult, quiet_s: float, stop: Stop
) -> None:
    """Once every event has its reply, take the replies still due to its resends (each send
    is answered once, unless it was lost) until all came or none for ``quiet_s``, so that
    ``duplicates`` counts them (a later replay on the collector would count them as
    ``unexpected``). Replies to no send of this replay (another replay's, on a shared
    collector) do not keep it waiting."""

    def ours() -> int:
        return result.received + result.duplicates + result.shutdown_resent

    last = time.perf_counter()
    while (
        ours() < result.sent + result.resent
        and time.perf_counter() - last < quiet_s
        and not stop.is_set()
    ):
        if (frames := consumer.recv_frames(timeout_ms=100)) is not None:
            before = ours()
            _receive(frames, sender, result)
            if ours() != before:
                last = time.perf_counter()


def _refused(sockets: dict[str, Producer | Consumer], result: ReplayResult) -> bool:
    """Note in ``result.refused`` the sockets whose handshake their peer refused since the
    last call (read off their monitors without waiting); whether any was."""
    for name, endpoint in sockets.items():
        if (cause := endpoint.refusal()) is not None:
            result.refused.setdefault(name, cause)
    return bool(result.refused)


def _receive(frames: list[Any], sender: _Sender, result: ReplayResult) -> None:
    t = time.perf_counter()
    try:
        msg = decode(frames)
        reply = msg.to_reply()
    except WireError as e:
        result.invalid_replies += 1
        result.invalid_reply_reasons[e.reason] += 1
        result.first_invalid_reply = result.first_invalid_reply or str(e)
        return
    key = (reply.run, reply.event)
    if reply.reason == "shutdown" and sender.set_aside(reply.msg_id, key, t, msg):
        result.t_last_reply = t
        return
    sent = sender.match(reply.msg_id, key)
    if sent is None:
        return
    result.t_last_reply = t
    _count(msg, reply, sent, t, result)


def _count(msg: Message, reply: TrackReply, sent: _Send, t: float, result: ReplayResult) -> None:
    """``msg`` (``reply`` decoded, arrived at ``t``) as the answer to ``sent``; scored as its
    event's unless it names another event (a daemon's fault: ``mismatched_replies``)."""
    result.latencies.append(t - sent.t_first)
    if sent.t_due is not None:
        result.schedule_latencies.append(t - sent.t_due)
    if not reply.ok:
        result.errors[reply.reason] += 1
    elif (m := reply.model) is not None:  # a daemon before wire version 6 names none
        result.models[f"{m.name} (hash {m.hash}, threshold {m.threshold:g})"] += 1
    key = (reply.run, reply.event)
    if key != sent.key:
        result.other_event_replies += 1
        return
    kept = result.scored_replies.get(key)
    if kept is None or (reply.ok and not kept.to_reply().ok):  # an ok reply came after all
        result.scored_replies[key] = msg


def beam_lines(replies: dict[Key, Message]) -> list[list[float]]:
    """The distinct beam lines ([x, y] mm) that ok replies' perigee parameters are about."""
    found = {r.beam_line for r in (m.to_reply() for m in replies.values()) if r.ok}
    return [list(b) for b in sorted(b for b in found if b is not None)]


def ambiguous_keys(events: list[Recorded]) -> set[Key]:
    """The (run, event) numbers that name events of different hits in ``events`` (two
    producers' runs recorded together): replies name events by number, so theirs cannot be
    told apart. An event recorded twice (a looped replay) is one event."""
    seen: dict[Key, Recorded] = {}
    out: set[Key] = set()
    for rec in events:
        first = seen.setdefault(rec.key, rec)
        if first is not rec and rec.key not in out and not first.event.hits.equals(rec.event.hits):
            out.add(rec.key)
    return out


def labels_of(events: list[Recorded], replies: dict[Key, Message]) -> dict[Key, np.ndarray | None]:
    """Per-hit track ids (TrackML submission labels) of every event with an ok reply, but
    those of :func:`ambiguous_keys`; None where the reply's tracks name hit ids the event
    does not have, or a hit twice (a daemon's fault: its tracks share no hit, and a label
    holds one track: a track whose hits later ones took would vanish from the physics, its
    fake or duplicate unseen)."""
    out: dict[Key, np.ndarray | None] = {}
    ambiguous = ambiguous_keys(events)
    for rec in events:
        msg = replies.get(rec.key)
        if msg is None or rec.key in out or rec.key in ambiguous:
            continue
        reply = msg.to_reply()
        if reply.ok:
            hit_ids = rec.event.hits.hit_id
            try:
                tracks = reply.to_tracks(hit_ids)
            except ValueError:  # hit ids not in the event
                out[rec.key] = None
                continue
            labels = tracks.track_id_per_hit(len(hit_ids))
            out[rec.key] = labels if np.count_nonzero(labels) == len(tracks.hit_index) else None
    return out


def physics(
    events: list[Recorded], replies: dict[Key, Message], labels: dict[Key, np.ndarray | None]
) -> dict[str, Any]:
    """Physics metrics over the events that have truth and an ok reply that fits them
    (``labels`` from :func:`labels_of`): {} for a recording without truth, NaN rates and
    ``events_scored`` 0 where none was answered ok; the vertex cut of each event about the
    beam line its reply names (the z axis if none)."""
    totals = PhysicsTotals()
    labels = dict(labels)
    for rec in events:
        ev, lab = rec.event, labels.pop(rec.key, None)
        if ev.truth is not None and lab is not None:
            totals.add(ev, lab, replies[rec.key].to_reply().beam_line or (0.0, 0.0))
    return totals.report(always=any(rec.event.truth is not None for rec in events))


def plot_latency(latencies_s: Sequence[float], path: str | Path, title: str = "replay") -> None:
    """Histogram of reply latencies (log-spaced bins) with p50/p90/p99 marked, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = np.asarray(latencies_s) * 1000
    fig, ax = plt.subplots(figsize=(6, 4))
    if len(ms):
        bins = np.geomspace(max(ms.min(), 1e-3), max(ms.max(), 1e-2) * 1.01, 40)
        # matplotlib's stubs type bins as Sequence[float]; an array of edges is what it takes.
        ax.hist(ms, bins=bins)  # type: ignore[arg-type]
        for q, style in ((50, "-"), (90, "--"), (99, ":")):
            v = float(np.percentile(ms, q))
            ax.axvline(v, color="k", linestyle=style, label=f"p{q} = {v:.1f} ms")
        ax.legend()
    ax.set_xscale("log")
    ax.set_xlabel("latency, send to reply [ms]")
    ax.set_ylabel("events")
    ax.set_title(f"{title}: {len(ms)} replies")
    fig.tight_layout()
    save_png(fig, Path(path))


def format_report(report: dict[str, Any]) -> str:
    """The report as an aligned two-column table; a value not known (None, or NaN: a rate
    of nothing) as ``-``."""

    def fmt(v: Any) -> str:
        if isinstance(v, float) and not math.isnan(v):
            return f"{v:.4g}"
        if isinstance(v, dict):
            return ", ".join(f"{k}: {n}" for k, n in v.items()) or "none"
        return "-" if v is None or isinstance(v, float) else str(v)

    width = max(map(len, report))
    return "\n".join(f"{k:<{width}}  {fmt(v)}" for k, v in report.items())
