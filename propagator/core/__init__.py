"""The pure mapping core: keys, field mappings, transforms, comparison, planning.

Nothing in this package performs I/O or imports a database driver, so every rule
about *what* must change can be tested in memory and is shared by the reconcile,
the listener path and the seed's programmatic API.
"""
