"""Connecting to Temporal the same way everywhere (worker, starter, CLI, tests).

Also the custom search attributes that make the queue filterable in the Temporal Web UI.
"""

from __future__ import annotations

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter

from taskomatic.settings import Settings

TASK_KIND = SearchAttributeKey.for_keyword("TaskomaticKind")
TASK_VM = SearchAttributeKey.for_keyword("TaskomaticVm")
TASK_HOST = SearchAttributeKey.for_keyword("TaskomaticHost")
TASK_POOL = SearchAttributeKey.for_keyword("TaskomaticPool")
TASK_STATE = SearchAttributeKey.for_keyword("TaskomaticState")
TASK_RESOURCES = SearchAttributeKey.for_keyword_list("TaskomaticResources")
SEARCH_ATTRIBUTES = (TASK_KIND, TASK_VM, TASK_HOST, TASK_POOL, TASK_STATE, TASK_RESOURCES)


async def connect_temporal(settings: Settings) -> Client:
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
    )


async def ensure_search_attributes(client: Client, namespace: str) -> list[str]:
    """Register taskomatic's search attributes if the server lacks them; returns those added."""
    service = client.operator_service
    have = await service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
    missing = {key.name: IndexedValueType.ValueType(int(key.indexed_value_type))
               for key in SEARCH_ATTRIBUTES if key.name not in have.custom_attributes}
    if missing:
        await service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing))
    return sorted(missing)
