"""Payload encryption: ciphertext at rest, key rotation, wrong or missing keys."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.history.v1 import History
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from conftest import Lab
from starter.client import TaskError, TaskomaticClient
from taskomatic.codec import ENCODING, CodecError, KeyRing, decode_payloads, key_entry, new_key
from taskomatic.hypervisor import Hypervisors
from taskomatic.inventory.db import Database
from taskomatic.models import CreateVmRequest
from taskomatic.settings import Settings
from taskomatic.temporal import HEADER_CODEC, data_converter, key_ring
from worker import build_ordering_worker, build_worker

K1, K2 = new_key(), new_key()
OLD = KeyRing([("k1", K1)])
ROTATED = KeyRing([("k2", K2), ("k1", K1)])


def _client(env: WorkflowEnvironment, settings: Settings, ring: KeyRing | None) -> Client:
    return Client(**{**env.client.config(), "data_converter": data_converter(settings, ring),
                      "header_codec_behavior": HEADER_CODEC})  # as connect_temporal's


@pytest.fixture(scope="module")
async def sealed(temporal_env: WorkflowEnvironment, settings: Settings, db: Database,
                 hypervisors: Hypervisors) -> AsyncIterator[TaskomaticClient]:
    """A worker and a starter that encrypt with key k1, on their own task queue."""
    own = settings.model_copy(update={"task_queue": f"sealed-{uuid.uuid4().hex[:6]}"})
    temporal = _client(temporal_env, own, OLD)
    with ThreadPoolExecutor(max_workers=own.activity_threads) as executor:
        async with build_worker(temporal, own, hypervisors, executor), \
                build_ordering_worker(temporal, own):
            yield TaskomaticClient(temporal, own, db)


async def _raw_history(env: WorkflowEnvironment, task_id: str) -> History:
    """The history as stored, read WITHOUT the codec, search attributes and version markers
    removed (readable by design)."""
    fetched = await env.client.get_workflow_handle(task_id).fetch_history()
    history = History(events=list(fetched.events))
    for event in history.events:
        for kind in ("workflow_execution_started_event_attributes",
                     "upsert_workflow_search_attributes_event_attributes"):
            if event.HasField(kind):  # (reading an unset oneof member would set it)
                getattr(event, kind).ClearField("search_attributes")
        # Version markers (workflow.patched) hold only the patch's name, written by the SDK's
        # core without the codec: readable by design, like the search attributes.
        if (event.HasField("marker_recorded_event_attributes")
                and event.marker_recorded_event_attributes.marker_name == "core_patch"):
            event.marker_recorded_event_attributes.ClearField("details")
    return history


def _payloads(history: History) -> list[Payload]:
    found: list[Payload] = []

    def walk(message: object) -> None:
        if isinstance(message, Payload):
            found.append(message)
            return
        for field, value in message.ListFields():  # type: ignore[attr-defined]
            if field.message_type is None:
                continue
            if field.message_type.GetOptions().map_entry:
                items = list(value.values())
            else:
                items = [value] if hasattr(value, "ListFields") else list(value)
            for item in items:
                walk(item)

    walk(history)
    return found


async def test_history_holds_only_ciphertext(sealed: TaskomaticClient, lab: Lab,
                                             temporal_env: WorkflowEnvironment) -> None:
    host = lab.host(vcpus=4, memory_mib=4096)
    ok_vm, big_vm = lab.vm_name("secret-ok"), lab.vm_name("secret-big")
    done = await sealed.create_vm(CreateVmRequest(name=ok_vm, host=host.name, start=True),
                                  task_id=f"enc-{uuid.uuid4().hex}")
    assert (await done.result()).vm == ok_vm  # the codec's owner reads it fine
    failed = await sealed.create_vm(CreateVmRequest(name=big_vm, host=host.name,
                                                    memory_mib=65536),
                                    task_id=f"enc-{uuid.uuid4().hex}")
    with pytest.raises(TaskError) as err:
        await failed.result()
    assert err.value.failure.error_type == "NoCapacity" and host.name in err.value.failure.message
    assert err.value.failure.vm == big_vm

    for task_id, vm in ((done.id, ok_vm), (failed.id, big_vm)):
        history = await _raw_history(temporal_env, task_id)
        stored = history.SerializeToString()
        for secret in (vm, host.uri, host.name, "lacks room"):  # (error *types* stay readable)
            assert secret.encode() not in stored, f"{secret!r} stored in plaintext ({task_id})"
        payloads = _payloads(history)
        assert len(payloads) > 5 and all(p.metadata["encoding"] == ENCODING for p in payloads)
        assert {p.metadata["encryption-key-id"] for p in payloads} == {b"k1"}
    failure = history.events[-1].workflow_execution_failed_event_attributes.failure
    assert failure.message == "Encoded failure"  # the real message is in encoded_attributes


async def test_rotated_keys_still_decrypt_and_encrypt_with_the_new_key(
        sealed: TaskomaticClient, lab: Lab, temporal_env: WorkflowEnvironment,
        settings: Settings) -> None:
    host = lab.host()
    name = lab.vm_name("rot")
    task = await sealed.create_vm(CreateVmRequest(name=name, host=host.name))
    await task.result()
    rotated = TaskomaticClient(_client(temporal_env, settings, ROTATED), settings, sealed.db)
    status = await rotated.task(task.id).describe()  # written under k1, read with [k2, k1]
    assert status.result is not None and status.result.vm == name
    assert status.state == "complete"
    sealed_again = ROTATED.encrypt(Payload(data=b"x"))
    assert sealed_again.metadata["encryption-key-id"] == b"k2"
    assert decode_payloads(ROTATED, [sealed_again])[0].data == b"x"


@pytest.mark.parametrize(("ring", "message"), [
    (KeyRing([("k9", new_key())]), "encrypted with key 'k1', which is not among the loaded keys"),
    (KeyRing([("k1", new_key())]), "does not decrypt with key 'k1'"),
    (None, "no encryption keys are configured"),
])
async def test_wrong_or_missing_key_is_a_clear_error(
        sealed: TaskomaticClient, lab: Lab, temporal_env: WorkflowEnvironment,
        settings: Settings, ring: KeyRing | None, message: str) -> None:
    host = lab.host()
    task = await sealed.create_vm(CreateVmRequest(name=lab.vm_name("k"), host=host.name))
    await task.result()
    stranger = TaskomaticClient(_client(temporal_env, settings, ring), settings, sealed.db)
    with pytest.raises(CodecError, match=message):
        await stranger.task(task.id).result()


def test_key_files_parse_and_refuse_bad_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# current key first\n" + key_entry("new", K2) + key_entry("old", K1))
    ring = KeyRing.from_file(path)
    assert ring.current == "new" and ring.ids == ["new", "old"]
    secret = base64.b64encode(K1).decode()
    assert secret not in repr(ring)
    cases = {
        "k1:" + base64.b64encode(b"short").decode(): "must be 32 bytes",
        "k1:not base64!": "not valid base64",
        f"k1:{secret},k1:{secret}": "listed twice",
        f"bad id:{secret}": "key id 'bad id'",
        "justtext": "is not '<key id>:<base64 key>'",
        "# nothing\n": "no encryption keys found",
    }
    for text, message in cases.items():
        with pytest.raises(CodecError, match=message) as err:
            KeyRing.parse(text, "TASKOMATIC_ENCRYPTION_KEYS")
        assert secret not in str(err.value)
    with pytest.raises(CodecError, match="cannot read the encryption key file"):
        KeyRing.from_file(tmp_path / "missing")


def test_settings_choose_the_key_source(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(key_entry("file-key", K1))
    env_keys = key_entry("env-key", K2).strip()
    assert key_ring(Settings(_env_file=None)) is None  # type: ignore[call-arg]
    from_env = key_ring(Settings(_env_file=None, encryption_keys=env_keys))  # type: ignore[call-arg]
    assert from_env is not None and from_env.current == "env-key"
    both = key_ring(Settings(_env_file=None, encryption_keys=env_keys,  # type: ignore[call-arg]
                             encryption_key_file=path))
    assert both is not None and both.current == "file-key"
    assert base64.b64encode(K2).decode() not in repr(Settings(  # type: ignore[call-arg]
        _env_file=None, encryption_keys=env_keys))
