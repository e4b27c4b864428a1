"""The CUDA event path of the sample loop, run on CPU with fake events (harness/measure/timing.py).

A fake event records perf_counter when recorded; the fake synchronize counts calls and logs them
beside the flushes, calls and event records, so the order within a batch can be checked.
"""

from __future__ import annotations

import time

import pytest

from harness.measure.timing import (
    MAX_BATCH,
    EventApi,
    batch_size,
    time_samples_ms,
    timing_mode,
    warm_up,
)


class _Log:
    def __init__(self) -> None:
        self.events: list[str] = []

    def api(self, flush: bool = True) -> EventApi:
        log = self

        class FakeEvent:
            def __init__(self) -> None:
                self.t: float | None = None
                self.at = -1

            def record(self) -> None:
                self.t = time.perf_counter()
                self.at = len(log.events)
                log.events.append("record")

            def elapsed_time(self, end: FakeEvent) -> float:
                # as torch's: read only after a synchronise that came after the end event
                assert "sync" in log.events[end.at :], "elapsed_time read before a synchronize"
                return (end.t - self.t) * 1e3

        return EventApi(event=FakeEvent, synchronize=lambda: log.events.append("sync"),
                        flush=(lambda: log.events.append("flush")) if flush else None)  # fmt: skip

    def fn(self, sleep_s: float = 0.0):
        def call() -> None:
            self.events.append("call")
            if sleep_s:
                time.sleep(sleep_s)

        return call


def test_one_synchronize_per_batch_and_flush_outside_the_events():
    log = _Log()
    samples = time_samples_ms(log.fn(), device="cpu", warmup=0, repeats=7, min_repeats=1,
                              max_time_s=60.0, events=log.api())  # fmt: skip
    assert len(samples) == 7
    # batches of 1, 2, 4: three synchronises for seven samples (plus one after warm-up)
    sample_events = log.events[log.events.index("sync") + 1 :]
    assert sample_events.count("sync") == 3
    batches = " ".join(sample_events).split("sync")
    per_sample = "flush record call record"
    assert [b.strip() for b in batches if b.strip()] == [
        " ".join([per_sample] * n) for n in (1, 2, 4)
    ]


def test_no_flush_when_switched_off():
    log = _Log()
    time_samples_ms(log.fn(), device="cpu", warmup=0, repeats=3, min_repeats=3, max_time_s=60.0,
                    events=log.api(flush=False))  # fmt: skip
    assert "flush" not in log.events and log.events.count("call") == 3


def test_event_samples_measure_the_call():
    log = _Log()
    samples = time_samples_ms(log.fn(sleep_s=0.01), device="cpu", warmup=0, repeats=3,
                              min_repeats=3, max_time_s=60.0, events=log.api())  # fmt: skip
    assert all(9.0 <= s < 200.0 for s in samples)  # 10 ms sleeps, measured between the events


def test_batches_grow_to_the_cap_and_respect_min_and_repeats():
    assert [batch_size(i, 0, 1000, 1) for i in range(8)] == [1, 2, 4, 8, 16, 32, 32, 32]
    assert MAX_BATCH == 32
    assert batch_size(0, 0, 1000, 20) == 20  # min_repeats needed at once
    assert batch_size(3, 95, 100, 1) == 5  # never past repeats


def test_time_budget_stops_between_batches():
    log = _Log()
    samples = time_samples_ms(log.fn(sleep_s=0.02), device="cpu", warmup=0, repeats=1000,
                              min_repeats=1, max_time_s=0.05, events=log.api())  # fmt: skip
    # batches 1, 2 (60 ms > 50 ms budget): stop after the second batch
    assert len(samples) == 3
    assert log.events.count("sync") == 1 + 2


def test_ranks_decide_per_batch():
    log = _Log()
    asked: list[bool] = []

    def rank0_says_stop(more: bool) -> bool:
        asked.append(more)
        return False  # rank 0 stops after the first batch, whatever this rank thinks

    samples = time_samples_ms(log.fn(), device="cpu", warmup=0, repeats=10, min_repeats=1,
                              max_time_s=60.0, events=log.api(),
                              decide=rank0_says_stop)  # fmt: skip
    assert len(samples) == 1 and asked == [True]


def test_warm_up_by_time_runs_until_the_budget():
    log = _Log()
    started = time.perf_counter()
    calls = warm_up(log.fn(sleep_s=0.005), warmup=2, warmup_ms=60.0,
                    synchronize=lambda: log.events.append("sync"))  # fmt: skip
    spent_ms = (time.perf_counter() - started) * 1e3
    assert spent_ms >= 60.0
    assert calls == log.events.count("call") and calls > 2 + 60 / 5 / 4  # count, then by time
    # rounds of 1, 2, 4, ...: one synchronise per round (and one before the clock starts)
    assert log.events.count("sync") <= 1 + 6


def test_warm_up_by_time_on_the_cpu_path_too():
    calls: list[int] = []
    started = time.perf_counter()
    time_samples_ms(lambda: calls.append(1), device="cpu", warmup=0, warmup_ms=30.0, repeats=1,
                    min_repeats=1, max_time_s=1.0)  # fmt: skip
    assert (time.perf_counter() - started) * 1e3 >= 30.0 and len(calls) > 2


def test_timing_mode_names():
    assert timing_mode("cpu", l2_flush=True, cuda_graph=True) == "perf_counter"
    assert timing_mode("cuda") == "cuda_events+l2_flush"
    assert timing_mode("cuda", l2_flush=False, cuda_graph=True) == "cuda_graph"


@pytest.mark.parametrize(
    ("timing", "message"),
    [
        ({"l2_flush": "yes"}, "timing.l2_flush: must be true or false; got 'yes'"),
        ({"cuda_graph": 1}, "timing.cuda_graph: must be true or false; got 1"),
        ({"warmup_ms": -1}, "timing.warmup_ms: Input should be greater than or equal to 0"),
        ({"processes": 0}, "timing.processes: Input should be greater than or equal to 1"),
        ({"processes": 65}, "timing.processes: Input should be less than or equal to 64"),
    ],
)
def test_new_timing_keys_validate(timing, message):
    from harness.errors import SuiteError
    from harness.suite import parse_suite

    with pytest.raises(SuiteError, match="^suite: " + message.replace("(", r"\(")):
        parse_suite({"name": "x", "workload": "attention", "implementations": ["naive"],
                     "timing": timing})  # fmt: skip


def test_new_timing_keys_default():
    from harness.suite import parse_suite

    t = parse_suite({"name": "x", "workload": "attention", "implementations": ["naive"]}).timing
    assert (t.l2_flush, t.cuda_graph, t.warmup_ms, t.processes) == (True, False, 0.0, 1)


# --- the real thing, where a CUDA device exists ------------------------------------------------


def _cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_cuda_events_and_graph_time_a_matmul(cuda_graph):
    import torch

    _cuda()
    a = torch.randn(2048, 2048, device="cuda")
    fn = lambda: a @ a  # noqa: E731
    samples = time_samples_ms(fn, device="cuda", warmup=2, warmup_ms=5.0, repeats=20,
                              min_repeats=20, max_time_s=10.0, cuda_graph=cuda_graph)  # fmt: skip
    assert len(samples) == 20 and all(s > 0 for s in samples)
    # 2·2048³ FLOP: above 1 µs and below 100 ms on any CUDA device this harness targets
    assert 1e-3 < sorted(samples)[10] < 100.0


@pytest.mark.gpu
def test_a_call_that_cannot_be_captured_says_so():
    import torch

    from harness.measure.timing import GraphCaptureError

    _cuda()
    a = torch.randn(64, device="cuda")

    def syncs() -> None:
        (a * 2).sum().item()  # a host read: illegal inside a capture

    with pytest.raises(GraphCaptureError, match="timing.cuda_graph: capturing the call"):
        time_samples_ms(syncs, device="cuda", warmup=1, repeats=3, min_repeats=3,
                        max_time_s=1.0, cuda_graph=True)  # fmt: skip
