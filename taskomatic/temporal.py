"""Connecting to Temporal the same way everywhere (worker, starter, CLI, tests).

Also the custom search attributes that make the queue filterable in the Temporal Web UI.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.common import HeaderCodecBehavior, SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import TLSConfig

from taskomatic.codec import CodecError, EncryptionCodec, KeyRing
from taskomatic.settings import Settings, split_address

TASK_KIND = SearchAttributeKey.for_keyword("TaskomaticKind")
TASK_VM = SearchAttributeKey.for_keyword("TaskomaticVm")
TASK_HOST = SearchAttributeKey.for_keyword("TaskomaticHost")
TASK_POOL = SearchAttributeKey.for_keyword("TaskomaticPool")
TASK_STATE = SearchAttributeKey.for_keyword("TaskomaticState")
TASK_RESOURCES = SearchAttributeKey.for_keyword_list("TaskomaticResources")
TASK_REQUESTED_BY = SearchAttributeKey.for_keyword("TaskomaticRequestedBy")
SEARCH_ATTRIBUTES = (TASK_KIND, TASK_VM, TASK_HOST, TASK_POOL, TASK_STATE, TASK_RESOURCES,
                     TASK_REQUESTED_BY)


# Headers (the audit log's step names, workflows.events) go through the codec like every payload.
HEADER_CODEC = HeaderCodecBehavior.CODEC


async def connect_temporal(settings: Settings, runtime: Runtime | None = None) -> Client:
    """A client with taskomatic's data converter (encrypting if keys are set), TLS and API key;
    on ``runtime`` when given (the worker's, exporting the SDK's metrics: ``sdk_runtime``)."""
    api_key = settings.temporal_api_key
    tls = tls_config(settings)
    try:
        return await Client.connect(
            settings.temporal_address,
            namespace=settings.temporal_namespace,
            data_converter=data_converter(settings),
            tls=tls,  # None: TLS only with an API key (hosted Temporal)
            api_key=api_key.get_secret_value() if api_key else None,
            runtime=runtime,
            header_codec_behavior=HEADER_CODEC,
        )
    except RuntimeError as err:
        how = " over TLS" if tls or api_key else ""
        raise RuntimeError(f"cannot connect to Temporal at {settings.temporal_address}{how}: "
                           f"{_refusal_hint(str(err), tls is not None or api_key is not None)}"
                           f"[{err}]") from None


def sdk_runtime(settings: Settings) -> Runtime | None:
    """A Temporal runtime whose telemetry serves the SDK's Prometheus metrics (polls, slots,
    schedule-to-start latency, …) on ``TASKOMATIC_TEMPORAL_METRICS_ADDRESS``; None (the default
    runtime, no metrics) when that is empty."""
    if not settings.temporal_metrics_address:
        return None
    split_address(settings.temporal_metrics_address, "TASKOMATIC_TEMPORAL_METRICS_ADDRESS")
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(
        bind_address=settings.temporal_metrics_address, durations_as_seconds=True)))


def _refusal_hint(error: str, tls: bool) -> str:
    """What a connection failure most likely means, from the transport's own words."""
    if "status: 400" in error and tls:
        return ("the TLS endpoint refused the request (HTTP 400): it wants a client certificate "
                "it trusts (TASKOMATIC_TEMPORAL_TLS_CERT_FILE / _KEY_FILE) ")
    if any(s in error for s in ("status: 401", "status: 403", "Unauthenticated",
                                "PermissionDenied")):
        return "not authorised: check TASKOMATIC_TEMPORAL_API_KEY or the client certificate "
    if "certificate" in error.lower() or "InvalidCertificate" in error:
        return ("the server's certificate is not trusted: check TASKOMATIC_TEMPORAL_TLS_CA_FILE "
                "and TASKOMATIC_TEMPORAL_TLS_SERVER_NAME ")
    if not tls and any(s in error for s in ("http2 error", "GoAway", "connection closed")):
        return ("the endpoint does not speak plaintext gRPC; it may need TLS "
                "(TASKOMATIC_TEMPORAL_TLS_CA_FILE or TASKOMATIC_TEMPORAL_TLS=true) ")
    return ""


def key_ring(settings: Settings) -> KeyRing | None:
    """The configured encryption keys (the file's, then the variable's), or None: no encryption."""
    if settings.encryption_key_file is not None:
        return KeyRing.from_file(settings.encryption_key_file)
    if settings.encryption_keys is not None:
        return KeyRing.parse(settings.encryption_keys.get_secret_value(),
                             "TASKOMATIC_ENCRYPTION_KEYS")
    return None


def data_converter(settings: Settings, ring: KeyRing | None = None) -> DataConverter:
    """pydantic payloads, sealed by the encryption codec; failure messages and stack traces
    travel as encoded attributes, so they are encrypted too."""
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec(ring or key_ring(settings)),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def tls_config(settings: Settings) -> TLSConfig | None:
    """TLS (and mutual TLS with a client certificate) from the ``temporal_tls_*`` settings."""
    files = (settings.temporal_tls_ca_file, settings.temporal_tls_cert_file,
             settings.temporal_tls_key_file)
    if not settings.temporal_tls and not any(files):
        return None
    if bool(settings.temporal_tls_cert_file) != bool(settings.temporal_tls_key_file):
        raise CodecError("temporal_tls_cert_file and temporal_tls_key_file go together "
                         "(a client certificate needs its private key)")
    ca, cert, key = (_read(path) for path in files)
    return TLSConfig(server_root_ca_cert=ca, client_cert=cert, client_private_key=key,
                     domain=settings.temporal_tls_server_name)


def _read(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as err:
        raise CodecError(f"cannot read {path}: {err.strerror}") from None


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
