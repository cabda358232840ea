"""Infrastructure every verb uses, below every other layer and without domain knowledge.

``errors`` (InputError: one line naming the file), ``atomic`` (atomic writes, fsync, file hashing),
``locking`` (folder locks with the holder's pid), ``outputs`` (output paths checked before the work),
``workers`` (the one process pool: spawned workers that die with their parent; ``BatchSummary``), ``devices``
(device, autocast, seeds), ``text`` (one-line reasons, number lists), ``json_files`` (one checked JSON
reader).
"""
