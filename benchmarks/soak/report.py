"""The soak's verdict and its printout: requests, errors by kind, latency, resources."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from .chaos import ChaosEvent
from .outcomes import DISCONNECTED, ERROR, LOST, OK, REJECTED, Outcome
from .plan import CHAOS, MIB, SoakPlan
from .resources import ProcStat, Snapshot


@dataclass
class Report:
    plan: SoakPlan
    outcomes: list[Outcome]
    events: list[ChaosEvent]
    start: Snapshot
    end: Snapshot
    started: float  # time.monotonic() when the traffic began
    long_lived: tuple[str, ...] = ()  # workers that no chaos touches: bounded
    notes: list[str] = field(default_factory=list)  # problems found outside the outcomes

    def excused(self, outcome: Outcome) -> bool:
        """An error of the chaos model overlapping a kill or a stop: expected."""
        if outcome.bad or outcome.model != CHAOS:
            return False
        for event in self.events:
            low, high = event.window()
            if event.excuses and outcome.started <= high and outcome.ended >= low:
                return True
        return False

    def failures(self) -> list[str]:
        found: list[str] = []
        lost = Counter(o.kind + " " + o.label for o in self.outcomes if o.result == LOST)
        found += [f"lost ({n}x): {what}" for what, n in lost.items()]
        for o in self.outcomes:
            if o.bad and o.result == ERROR:
                kind = "5xx" if (o.status or 0) >= 500 else str(o.status)
                found.append(
                    f"client error {o.kind} answered {kind} (expected {o.expected}): {o.message}"
                )
            elif not o.bad and o.result == ERROR and not self.excused(o):
                found.append(f"unexpected error in {o.kind} on {o.model}: {o.label}")
        good = {o.family for o in self.outcomes if o.result == OK and not o.bad}
        tried = {o.family for o in self.outcomes if not o.bad}
        found += [f"no successful {kind} request" for kind in sorted(tried - good)]
        found += [f"chaos {e.action}: {e.problem}" for e in self.events if e.problem]
        found += self.notes
        return _dedupe(found) + self.resource_failures()

    def resource_failures(self) -> list[str]:
        bounds, found = self.plan.bounds, []
        start, end = self.start.supervisor, self.end.supervisor
        found += _grew("supervisor RSS", start.rss, end.rss, bounds.supervisor_rss, _mib)
        found += _grew("supervisor non-socket fds", start.files, end.files, bounds.supervisor_files)
        if end.to_gone:
            found.append(f"supervisor holds {end.to_gone} socket(s) to workers that are gone")
        most = self.most_sockets()
        if end.to_workers > most:
            found.append(f"supervisor holds {end.to_workers} sockets to workers (bound {most})")
        for name in self.long_lived:
            before, after = self.start.workers.get(name), self.end.workers.get(name)
            if before is None or after is None or before.pid != after.pid:
                found.append(f"the {name} worker, never struck by chaos, did not live to the end")
                continue
            found += _grew(f"{name} worker RSS", before.rss, after.rss, bounds.worker_rss, _mib)
            found += _grew(
                f"{name} worker non-socket fds", before.files, after.files, bounds.worker_files
            )
        return found

    def most_sockets(self) -> int:
        """The bound on the supervisor's sockets to live workers (see plan.Bounds)."""
        return len(self.end.workers) * (self.plan.clients + self.plan.bounds.pooled_spare)

    def render(self) -> str:
        out = [self._summary(), "", self._by_kind(), "", self._errors(), "", self._chaos()]
        out += ["", self._resources(), "", self._verdict()]
        return "\n".join(out)

    def _summary(self) -> str:
        counts = Counter(o.result for o in self.outcomes)
        excused = sum(1 for o in self.outcomes if o.result == ERROR and self.excused(o))
        return (
            f"soak: {self.plan.duration:g}s, {self.plan.clients} clients, seed {self.plan.seed}: "
            f"{len(self.outcomes)} requests: {counts[OK]} ok, {counts[DISCONNECTED]} dropped by "
            f"the client mid-stream, {counts[REJECTED]} client errors answered as expected, "
            f"{counts[ERROR]} errors ({excused} excused by chaos), {counts[LOST]} lost"
        )

    def _by_kind(self) -> str:
        groups: dict[str, list[Outcome]] = defaultdict(list)
        for o in self.outcomes:
            groups["bad inputs" if o.bad else o.kind].append(o)
        rows: list[tuple[str, ...]] = [
            ("kind", "n", "ok", "dropped", "as expected", "errors", "lost", "p50 ms", "p99 ms")
        ]
        everything = [o for o in self.outcomes if not o.bad]
        for name, items in [*sorted(groups.items()), ("all valid requests", everything)]:
            c = Counter(o.result for o in items)
            p50, p99 = _percentiles([o.seconds for o in items if o.result == OK])
            row = (name, len(items), c[OK], c[DISCONNECTED], c[REJECTED], c[ERROR], c[LOST])
            rows.append((*map(str, row), p50, p99))
        return _table(rows)

    def _errors(self) -> str:
        labels = Counter(
            ("excused " if self.excused(o) else "") + o.label
            for o in self.outcomes
            if o.result in (ERROR, LOST)
        )
        lines = ["errors by kind:" + ("" if labels else " none")]
        lines += [f"  {n:6d}  {label}" for label, n in labels.most_common()]
        statuses = Counter(o.status for o in self.outcomes if o.result == REJECTED)
        lines.append(
            "client errors by status: "
            + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items(), key=str))
        )
        return "\n".join(lines)

    def _chaos(self) -> str:
        lines = ["chaos (on the " + CHAOS + " model):"]
        for e in self.events:
            at = e.at - self.started
            back = (
                f"answered again after {e.recovered - e.at:.1f}s"
                if e.recovered
                else "never answered again"
            )
            gone = f"process gone after {e.gone - e.at:.1f}s" if e.gone else "process never went"
            if e.action == "unload" and not e.gone:
                gone = "kept loaded: later requests asked to keep it, as in Ollama"
            lines.append(
                f"  {e.action:8s} pid {e.pid} at {at:6.1f}s: {gone}, {back}"
                + (f"  PROBLEM: {e.problem}" if e.problem else "")
            )
        return "\n".join(lines)

    def _resources(self) -> str:
        head = ("process", "pid start/end", "RSS start", "RSS end", "growth", "fds start/end")
        rows: list[tuple[str, ...]] = [(*head, "non-socket fds start/end")]
        start, end = self.start, self.end
        pairs: list[tuple[str, ProcStat | None, ProcStat | None]] = [
            ("supervisor", start.supervisor, end.supervisor)
        ]
        for name in sorted(set(start.workers) | set(end.workers)):
            pairs.append((f"worker {name}", start.workers.get(name), end.workers.get(name)))
        for label, a, b in pairs:
            growth = f"{(b.rss - a.rss) / MIB:+.1f}M" if a and b else "-"
            rows.append(
                (
                    label,
                    f"{a.pid if a else '-'}/{b.pid if b else '-'}",
                    _mib(a.rss) if a else "-",
                    _mib(b.rss) if b else "-",
                    growth,
                    f"{a.fds if a else '-'}/{b.fds if b else '-'}",
                    f"{a.files if a else '-'}/{b.files if b else '-'}",
                )
            )
        sup, b_ = end.supervisor, self.plan.bounds
        most = self.most_sockets()
        bounds = (
            f"bounds: supervisor RSS +{_mib(b_.supervisor_rss)}, non-socket fds "
            f"+{b_.supervisor_files}, sockets to workers <= {most} (end: {sup.to_workers}), "
            f"to gone workers 0 (end: {sup.to_gone});\n        workers "
            f"{', '.join(self.long_lived) or '-'}: RSS +{_mib(b_.worker_rss)}, non-socket fds "
            f"+{b_.worker_files} (workers that chaos replaced are younger than the run: shown only)"
        )
        return _table(rows) + "\n" + bounds

    def _verdict(self) -> str:
        failures = self.failures()
        if not failures:
            return "verdict: PASS"
        return "verdict: FAIL\n" + "\n".join(f"  - {f}" for f in failures[:50])


def _percentiles(values: list[float]) -> tuple[str, str]:
    if len(values) < 2:
        return ("-", "-") if not values else (f"{values[0] * 1000:.0f}",) * 2  # type: ignore[return-value]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return f"{cuts[49] * 1000:.0f}", f"{cuts[98] * 1000:.0f}"


def _mib(value: int) -> str:
    return f"{value / MIB:.1f}M"


def _grew(what: str, before: int, after: int, bound: int, show: Any = str) -> list[str]:
    if after - before <= bound:
        return []
    return [f"{what} grew {show(after - before)} (from {show(before)}; bound {show(bound)})"]


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    )


def _dedupe(items: list[str]) -> list[str]:
    counts = Counter(items)
    return [f"{item} ({counts[item]}x)" if counts[item] > 1 else item for item in counts]
