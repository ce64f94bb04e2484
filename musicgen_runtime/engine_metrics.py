"""The LM engine's Prometheus metrics, served by Triton next to its own on the metrics endpoint.

`EngineMetrics(pb_utils, frame_rate)` creates the families through the python backend's metric API;
`report(stats)` takes the Scheduler's stats dict (see Scheduler) and must run on the engine thread
only: the python backend's metric calls crash the server when made from two threads at once.

    musicgen_lm_requests_in_flight             gauge    requests queued or generating
    musicgen_lm_queue_depth                    gauge    requests waiting for a batch slot
    musicgen_lm_active_rows                    gauge    KV-cache rows of the running batch (CFG: 2 a request)
    musicgen_lm_requests_finished_total        counter  by outcome: ok, error, cancelled
    musicgen_lm_frames_total                   counter  audio frames of finished requests
    musicgen_lm_audio_seconds_total            counter  seconds of audio of finished requests
                                                        (rate() of it is the real-time factor)
    musicgen_lm_time_to_first_audio_seconds    histogram  submit -> first audio frame ready
    musicgen_lm_heartbeat_timestamp_seconds    gauge    unix time of the engine thread's last report: the
                                                        supervisor's watchdog (server/supervisor.py) sees it
                                                        go stale while a step hangs or the thread is dead
"""

from __future__ import annotations

import time

# seconds; the first frame needs the text encoder, queueing and K (4) steps of the delay pattern
TTFA_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]
OUTCOMES = ("ok", "error", "cancelled")


class EngineMetrics:
    def __init__(self, pb_utils, frame_rate: float):
        mf = pb_utils.MetricFamily
        self.frame_rate = float(frame_rate)
        self._families = []  # kept alive: Triton drops a family whose object is collected

        def family(name, text, kind):
            f = mf(name, text, kind)
            self._families.append(f)
            return f

        self.in_flight = family("musicgen_lm_requests_in_flight", "requests queued or generating", mf.GAUGE).Metric(
            labels={}
        )
        self.queue_depth = family("musicgen_lm_queue_depth", "requests waiting for a batch slot", mf.GAUGE).Metric(
            labels={}
        )
        self.active_rows = family("musicgen_lm_active_rows", "KV-cache rows of the running batch", mf.GAUGE).Metric(
            labels={}
        )
        finished = family("musicgen_lm_requests_finished_total", "requests ended, by outcome", mf.COUNTER)
        self.outcome = {k: finished.Metric(labels={"outcome": k}) for k in OUTCOMES}
        self.frames = family("musicgen_lm_frames_total", "audio frames generated", mf.COUNTER).Metric(labels={})
        self.audio_seconds = family("musicgen_lm_audio_seconds_total", "seconds of audio generated", mf.COUNTER).Metric(
            labels={}
        )
        self.ttfa = family(
            "musicgen_lm_time_to_first_audio_seconds",
            "time from a request's arrival at the engine to its first audio frame",
            mf.HISTOGRAM,
        ).Metric(labels={}, buckets=TTFA_BUCKETS)
        self.heartbeat = family(
            "musicgen_lm_heartbeat_timestamp_seconds", "unix time the engine thread last looped", mf.GAUGE
        ).Metric(labels={})
        self._reported: dict = {}

    def report(self, stats: dict) -> None:
        """Gauges set, counters advanced by their deltas since the last report, new TTFAs observed."""
        self.heartbeat.set(time.time())
        self.in_flight.set(stats["in_flight"])
        self.queue_depth.set(stats["queue_depth"])
        self.active_rows.set(stats["active_rows"])
        for key, metric in [*self.outcome.items(), ("frames", self.frames)]:
            delta = stats[key] - self._reported.get(key, 0)
            if delta:
                metric.increment(delta)
                if key == "frames":
                    self.audio_seconds.increment(delta / self.frame_rate)
        for seconds in stats.get("time_to_first_audio", ()):
            self.ttfa.observe(seconds)
        self._reported = stats

    def close(self) -> None:
        """Drop the metrics, then their families (Triton wants them released in that order)."""
        for name in (
            "in_flight",
            "queue_depth",
            "active_rows",
            "outcome",
            "frames",
            "audio_seconds",
            "ttfa",
            "heartbeat",
        ):
            self.__dict__.pop(name, None)
        self._families.clear()
