"""taskomatic's bottom layer: models (``taskomatic.models``), the SQL inventory
(``taskomatic.inventory``), the libvirt layer (``taskomatic.hypervisor``), placement
(``taskomatic.placement``), host and task states (``taskomatic.states``), settings, errors and
logging.

It sits at the bottom of the dependency chain ``starter`` → ``workflows`` → ``activities`` →
``taskomatic`` and imports none of the layers above it.
"""

__version__ = "0.1.0"
