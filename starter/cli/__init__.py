"""The ``taskomatic`` command line (``starter.cli.main``): one module per noun, over the starter
library."""
