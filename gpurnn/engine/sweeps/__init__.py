"""The time loops: forward and BPTT over blocks (``bptt``), the recomputation schedules of a
memory budget (``recompute``) and the associative scan of diagonal recurrences (``scan``)."""
