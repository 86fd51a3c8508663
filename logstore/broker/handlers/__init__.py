"""The handlers of ``logstore.v1.LogStore``, one module per area.

``produce`` (Produce, ProduceStream, InitProducer), ``fetch`` (Fetch,
Subscribe), ``multi`` (MultiProduce, MultiFetch: many partitions per request,
through the produce and fetch areas), ``admin`` (topics, partitions, records,
offsets). Each area is a class built from the broker's :class:`~logstore.broker._runtime.Runtime`;
``logstore/broker/_rpc_table.py`` says which method of which area serves each
RPC. Handlers raise domain errors; the one error -> status boundary is the
service wrapper (``_service.py``). Groups and queues add their own areas.
"""
