"""Task outcomes from the ``gf:outcomes`` stream: the stream (stream), one batch applied,
dispatched and acknowledged (apply, with the retry decisions of retry), and the consumer loop
(consumer)."""
