"""The bottom layer: errors, dead letters, counters, progress, text rows, splits."""
