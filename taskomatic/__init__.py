"""taskomatic's shared foundation: models, settings, errors and logging.

This package sits at the bottom of the dependency chain ``starter`` → ``workflows`` → ``activities``
→ ``taskomatic``; it does no I/O of its own beyond reading configuration.
"""

__version__ = "0.1.0"
