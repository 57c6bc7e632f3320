"""Models of the host monitor and the libvirt event listener (``taskomatic.monitor``)."""

from __future__ import annotations

from pydantic import Field

from taskomatic.models.base import Model
from taskomatic.states import HostState


class ContactChange(Model):
    """What losing or regaining contact with a host changed in the inventory."""

    host: str
    changed: bool = Field(description="False: the host was not in the transition's source state")
    state: HostState | None = Field(None, description="the host's state afterwards (None: no "
                                                      "such host)")
    vms: list[str] = Field(default_factory=list, description="VMs marked unknown (lose only)")
