"""Fault injection: kills, corrupted files, full disks, concurrent writers, NaNs and bad input."""
