"""The end-to-end benchmark's project: the example shop plus one consumer that reports when
its handler's transaction committed (bench/end_to_end.py starts its processes)."""
