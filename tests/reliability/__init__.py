"""The reliability suite: crashes, faults in SQLite's I/O, load, hostile input, secrets (issue 6)."""
