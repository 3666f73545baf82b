"""The writer thread under steady traffic: one batch a linger, not a batch and then a trickle.

Each wake of the writer thread takes the GIL back from the audited threads, and where those run
Python all along that costs a forced switch (about 5 ms of waiting, the audited thread signalled at
each GIL release of its own meanwhile). Before, the events queued while a batch was being written
were written at once, in a batch of their own, and so on: under steady traffic the writer never
lingered again. Here that was 193 batches in a second where 18 lingers fit; with requests GETs on
an in-memory socket (writer process mode, 42,500 events) the writer thread made about 100,000
voluntary context switches and used 1.7 s of CPU; after the change (then with 256 rows a datagram)
48,000 and 0.9 s; bench `writer_wakes` on the kept code: 1.0 wake and 17.7 us an event, against
1.8-2.4 and 24-38 before.

Real threads, a real sink; the writer is an in-memory one whose write takes a few milliseconds,
as a datagram waiting for room or a ledger append does.
"""
from __future__ import annotations

import threading
import time

from interceptor import MemoryWriter, Sink
from interceptor.capture import Record

LINGER = 0.05
WRITE_S = 0.005


class SlowWriter(MemoryWriter):
    def __init__(self):
        super().__init__()
        self.batches: list[int] = []

    def write_batch(self, events) -> None:
        time.sleep(WRITE_S)
        self.batches.append(len(events))
        super().write_batch(events)


def test_steady_traffic_is_written_once_a_linger_not_in_trickles():
    writer = SlowWriter()
    sink = Sink(writer, linger_s=LINGER)
    stop = time.monotonic() + 1.0
    sent = 0

    def produce():
        nonlocal sent
        while time.monotonic() < stop:
            sink.submit(Record("http", "http", "GET", "h.example", 80))
            sent += 1
            time.sleep(0.001)

    t = threading.Thread(target=produce)
    t.start()
    t.join()
    assert sink.flush(10)
    sink.close(5)
    assert len(writer.events) == sent and sink.dropped_total == 0
    # about 1 s / (linger + write) batches, the last one whatever was left; before, about twice as
    # many, every other one the few events queued while the one before it was written
    lingers = 1.0 / (LINGER + WRITE_S)
    assert len(writer.batches) <= lingers + 3, writer.batches
    small = [n for n in writer.batches[:-1] if n < sent / lingers / 4]
    assert len(small) <= 2, writer.batches
