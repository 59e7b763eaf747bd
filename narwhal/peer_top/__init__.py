"""``peer_top``: a live view of a node's peers, read from its admin endpoint's ``/status``.

* :mod:`.source` — where to look (``--admin HOST:PORT`` or a testnet folder) and fetching;
* :mod:`.model` — snapshots to table rows: throughput from successive samples, health,
  per-peer history for the sparklines;
* :mod:`.render` — the cells and the one-shot rich table / JSON of ``--once``;
* :mod:`.app` — the Textual app and ``main()`` (``tools/peer_top``, ``narwhal-peer-top``).
"""
