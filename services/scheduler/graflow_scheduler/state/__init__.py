"""Run state in Redis: the Lua scripts (``*.lua``, loaded by scripts.py) that create runs, apply
outcomes, cancel runs and resolve waits, each atomic and idempotent; the writes (store) and reads
(reader, views: Redis to API messages) around them, run ids, and nodes added at run time
(dynamic_nodes)."""
