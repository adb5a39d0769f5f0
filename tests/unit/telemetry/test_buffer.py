"""The telemetry sample buffer: bounded, oldest dropped first, failed batches put back in order."""

from __future__ import annotations

from lem_telemetry.buffer import SampleBuffer


def test_sample_buffer_keeps_the_newest_and_puts_failed_batches_back_in_order() -> None:
    buffer: SampleBuffer[int] = SampleBuffer(5)
    buffer.add(range(3))
    taken = buffer.take_all()
    buffer.add([3, 4])
    buffer.put_back(taken)
    assert buffer.take_all() == [0, 1, 2, 3, 4]
    buffer.add(range(8))
    assert buffer.take_all() == [3, 4, 5, 6, 7] and buffer.dropped == 3
