"""A local multi-host libvirt lab: N real libvirtd daemons on this machine, each its own "host".

Public API (see README "Lab"): ``lab_hosts()`` lists the hosts of a running lab (name, libvirt
URI, migration URI); ``lab.control.lab_up`` / ``lab_down`` / ``lab_status`` drive it (the CLI is
``taskomatic lab up|down|status``); ``lab.guests`` builds the guests that run on it.
"""

from lab.models import LabError, LabHost, LabState
from lab.state import lab_hosts, load_state

__all__ = ["LabError", "LabHost", "LabState", "lab_hosts", "load_state"]
