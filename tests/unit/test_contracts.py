"""The contract registry: where each message travels, as the .proto options say.

Producers, consumers and `stack up` all route by this registry, so a wrong topic, key
or queue here is a message sent to the wrong place. The second half builds deliberately
broken contracts in a private descriptor pool and checks that each is refused.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import agentflux.v1
import pytest
from agentflux.v1 import events_pb2, options_pb2, tasks_pb2, types_pb2
from google.protobuf import descriptor_pb2, message_factory
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, FileDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message

from services.runtime.contracts import ContractError, build_registry, registry

PROTO_DIR = Path(__file__).resolve().parents[2] / "proto" / "agentflux" / "v1"


# -- agentflux's own contracts --------------------------------------------------------


def test_every_event_has_a_topic_and_a_singular_string_key_field() -> None:
    events = registry().events
    assert events, "no event contracts were read from the generated descriptors"
    for name, contract in events.items():
        desc = contract.message_class.DESCRIPTOR
        assert desc.full_name == name
        assert contract.topic, name
        field = desc.fields_by_name.get(contract.key_field)
        assert field is not None, f"{name}: key field {contract.key_field!r} does not exist"
        assert field.type == FieldDescriptor.TYPE_STRING, name
        assert not field.is_repeated, name


def test_every_message_of_events_proto_is_an_event() -> None:
    # A message in events.proto without the option would have no topic to go to.
    declared = {d.full_name for d in events_pb2.DESCRIPTOR.message_types_by_name.values()}
    assert declared == set(registry().events)


def test_every_topic_carries_exactly_one_event_type() -> None:
    reg = registry()
    counts = Counter(c.topic for c in reg.events.values())
    assert all(n == 1 for n in counts.values()), counts
    assert reg.topics == sorted(counts)
    for topic in reg.topics:
        assert reg.event_for_topic(topic).topic == topic


def test_the_three_run_events_are_keyed_by_conversation() -> None:
    reg = registry()
    expected = {
        events_pb2.AgentRequested: "agent.requested",
        events_pb2.ToolCalled: "agent.tool_called",
        events_pb2.AgentCompleted: "agent.completed",
    }
    for cls, topic in expected.items():
        contract = reg.event(cls)
        assert contract.topic == topic
        # Keying by tenant would pin a busy tenant to one partition (design §2).
        assert contract.key_field == "conversation_id"
        assert contract.message_class is cls
        assert reg.event(cls()) is contract
        assert reg.event(cls.DESCRIPTOR.full_name) is contract
        assert reg.event_for_topic(topic) is contract


def test_lookups_of_unknown_types_and_topics_fail() -> None:
    reg = registry()
    with pytest.raises(KeyError, match="not an event contract"):
        reg.event(types_pb2.Usage)
    with pytest.raises(KeyError, match="not a task contract"):
        reg.task(events_pb2.AgentRequested)
    with pytest.raises(KeyError, match=r"agent\.nowhere"):
        reg.event_for_topic("agent.nowhere")


def test_tool_task_contract() -> None:
    reg = registry()
    task = reg.task(tasks_pb2.ToolTask)
    assert set(reg.tasks) == {"agentflux.v1.ToolTask"}
    assert task.message_class is tasks_pb2.ToolTask
    assert task.queue == "agentflux.tool_tasks"
    assert task.exchange == "agentflux.tasks"
    assert task.routing_key == task.queue
    assert task.dead_letter_queue == "agentflux.tool_tasks.dlq"
    assert task.dead_letter_queue != task.queue
    # RabbitMQ clamps priorities above x-max-priority, which would flatten the top tiers.
    assert max(reg.amqp_priorities.values()) <= task.max_priority <= 255


def test_key_is_the_utf8_conversation_id() -> None:
    contract = registry().event(events_pb2.AgentRequested)
    event = events_pb2.AgentRequested(
        run_id="run-1", tenant_id="tenant-1", conversation_id="conv-é-1"
    )
    assert contract.key(event) == "conv-é-1".encode()


def test_key_refuses_an_empty_conversation_id() -> None:
    # An empty key would pile every such event onto one partition, unordered by
    # conversation: the producer must be stopped, not the partitioner surprised.
    contract = registry().event(events_pb2.AgentRequested)
    with pytest.raises(ValueError, match="conversation_id is empty"):
        contract.key(events_pb2.AgentRequested(run_id="run-1"))


def test_an_option_on_a_nested_message_is_read() -> None:
    file = _fixture_file()
    outer = file.message_type.add(name="Envelope")
    inner = outer.nested_type.add(name="Inner")
    inner.field.add(
        name="conversation_id",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    inner.options.Extensions[options_pb2.event].topic = "fixture.inner"
    inner.options.Extensions[options_pb2.event].key_field = "conversation_id"
    reg = build_registry(*_load(file))
    assert reg.event_for_topic("fixture.inner").type_name == "fixture.v1.Envelope.Inner"


def test_key_rejects_a_message_of_another_type() -> None:
    contract = registry().event(events_pb2.AgentRequested)
    other = events_pb2.AgentCompleted(conversation_id="conv-1")
    with pytest.raises(TypeError, match="AgentCompleted"):
        contract.key(other)


def test_dead_letter_topic_is_not_an_event_topic() -> None:
    reg = registry()
    assert reg.dead_letter_topic == "agent.dlq"
    assert reg.dead_letter_topic not in reg.topics


def test_amqp_priority_of_each_priority_value() -> None:
    reg = registry()
    p = types_pb2.Priority
    assert {value: reg.amqp_priority(value) for value in p.values()} == {
        p.PRIORITY_UNSPECIFIED: 5,
        p.PRIORITY_LOW: 1,
        p.PRIORITY_NORMAL: 5,
        p.PRIORITY_HIGH: 8,
        p.PRIORITY_URGENT: 10,
    }
    # An unset priority must be served like NORMAL, as types.proto promises.
    assert reg.amqp_priority(p.PRIORITY_UNSPECIFIED) == reg.amqp_priority(p.PRIORITY_NORMAL)


def test_amqp_priority_of_an_unknown_value() -> None:
    with pytest.raises(ValueError, match="99"):
        registry().amqp_priority(99)


# -- every generated message survives the wire ----------------------------------------


def _generated_modules() -> list[ModuleType]:
    names = sorted(
        m.name for m in pkgutil.iter_modules(agentflux.v1.__path__) if m.name.endswith("_pb2")
    )
    return [importlib.import_module(f"agentflux.v1.{name}") for name in names]


def _all_messages(descs: Iterable[Descriptor]) -> Iterator[Descriptor]:
    for desc in descs:
        if desc.GetOptions().map_entry:
            continue
        yield desc
        yield from _all_messages(desc.nested_types)


def _variants(desc: Descriptor) -> int:
    """How many fillings it takes for every member of every oneof to be set once."""
    return max((len(o.fields) for o in desc.oneofs), default=1)


def _scalar(field: Any, i: int) -> object:  # Any: stubs tell upb and Python descriptors apart
    """A non-default value of the field's type; `i` tells repeated elements apart."""
    f = FieldDescriptor
    if field.type == f.TYPE_STRING:
        return f"{field.name}-{i}-é"
    if field.type == f.TYPE_BYTES:
        return bytes([0, 0xFF, i])
    if field.type == f.TYPE_BOOL:
        return True
    if field.type == f.TYPE_ENUM:
        assert field.enum_type is not None
        non_zero = [v.number for v in field.enum_type.values if v.number != 0]
        assert non_zero, f"{field.full_name}: enum has no non-default value"
        return non_zero[(i + 1) % len(non_zero)]
    if field.cpp_type in (f.CPPTYPE_FLOAT, f.CPPTYPE_DOUBLE):
        return 1.5 + i  # exact in binary, so float32 fields compare equal after decoding
    # Extremes of each integer kind, where sign and width mistakes show.
    if field.cpp_type == f.CPPTYPE_INT32:
        return -(2**31) + i
    if field.cpp_type == f.CPPTYPE_INT64:
        return -(2**63) + i
    if field.cpp_type == f.CPPTYPE_UINT32:
        return 2**32 - 1 - i
    if field.cpp_type == f.CPPTYPE_UINT64:
        return 2**64 - 1 - i
    raise AssertionError(f"{field.full_name}: no sample value for type {field.type}")


_WELL_KNOWN: dict[str, Callable[[Message], None]] = {
    "google.protobuf.Timestamp": lambda m: m.MergeFrom(
        type(m)(seconds=1_767_225_600, nanos=123_456_789)
    ),
    "google.protobuf.Duration": lambda m: m.MergeFrom(type(m)(seconds=90, nanos=500_000_000)),
    "google.protobuf.Struct": lambda m: m.update(  # type: ignore[attr-defined]
        {"n": 1.5, "s": "é", "b": True, "z": None, "l": [1, "two"], "o": {"k": "v"}}
    ),
    "google.protobuf.Value": lambda m: m.struct_value.update(  # type: ignore[attr-defined]
        {"result": [1, 2.5, "x", False, None]}
    ),
    "google.protobuf.ListValue": lambda m: m.extend([1, "x", None, {"k": True}]),  # type: ignore[attr-defined]
}

_MAX_DEPTH = 6


def _fill(msg: Message, choice: int = 0, depth: int = 0) -> set[str]:
    """Sets every field of `msg` (one member per oneof, picked by `choice`) to a
    non-default value, recursively; returns the names of the fields set."""
    desc = msg.DESCRIPTOR
    if desc.full_name in _WELL_KNOWN:
        _WELL_KNOWN[desc.full_name](msg)
        return {f.name for f, _ in msg.ListFields()}
    chosen: set[str] = set()
    for field in desc.fields:
        oneof = field.containing_oneof
        if oneof is not None and oneof.fields[choice % len(oneof.fields)] is not field:
            continue
        chosen.add(field.name)
        value = getattr(msg, field.name)
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
            for i in range(2):
                key = _scalar(key_field, i)
                if value_field.message_type is not None:
                    _fill(value[key], choice, depth + 1)
                else:
                    value[key] = _scalar(value_field, i)
        elif field.is_repeated:
            for i in range(2):
                if entry is not None:
                    _fill(value.add(), choice + i, depth + 1)
                else:
                    value.append(_scalar(field, i))
        elif entry is not None:
            value.SetInParent()
            # Recursive types stop here; presence of the empty message still round-trips.
            if depth < _MAX_DEPTH:
                _fill(value, choice, depth + 1)
        else:
            setattr(msg, field.name, _scalar(field, choice))
    return chosen


def _round_trip_cases() -> list[Any]:
    cases = []
    for module in _generated_modules():
        for desc in _all_messages(module.DESCRIPTOR.message_types_by_name.values()):
            for choice in range(_variants(desc)):
                cases.append(pytest.param(desc, choice, id=f"{desc.full_name}-{choice}"))
    return cases


def test_every_proto_file_has_a_generated_module() -> None:
    protos = {p.stem for p in PROTO_DIR.glob("*.proto")}
    assert protos, PROTO_DIR
    assert {m.__name__.rsplit(".", 1)[1].removesuffix("_pb2") for m in _generated_modules()} == (
        protos
    )


def test_round_trip_covers_the_contract_messages() -> None:
    # Guards the discovery below: an empty parametrization would pass silently.
    names = {p.values[0].full_name for p in _round_trip_cases()}
    assert {
        "agentflux.v1.AgentRequested",
        "agentflux.v1.ToolTask",
        "agentflux.v1.StreamRunResponse",
        "agentflux.v1.Run",
        "agentflux.v1.EventOptions",
        "agentflux.v1.TaskOptions",
    } <= names


@pytest.mark.parametrize(("desc", "choice"), _round_trip_cases())
def test_round_trip_with_every_field_set(desc: Descriptor, choice: int) -> None:
    cls = message_factory.GetMessageClass(desc)
    msg = cls()
    expected = _fill(msg, choice)
    # Every field is set, so a field the wire drops cannot hide behind its default.
    assert {f.name for f, _ in msg.ListFields()} == expected
    assert expected, f"{desc.full_name} has no fields to fill"

    decoded = cls.FromString(msg.SerializeToString())

    assert decoded == msg
    assert {f.name for f, _ in decoded.ListFields()} == expected
    assert decoded.SerializeToString(deterministic=True) == msg.SerializeToString(
        deterministic=True
    )


# -- broken contracts are refused -----------------------------------------------------

FIXTURE_FILE = "fixture/v1/contracts.proto"


def _message(file: descriptor_pb2.FileDescriptorProto, name: str) -> descriptor_pb2.DescriptorProto:
    return next(m for m in file.message_type if m.name == name)


def _add_event(file: descriptor_pb2.FileDescriptorProto, name: str, topic: str) -> None:
    msg = file.message_type.add(name=name)
    fields = descriptor_pb2.FieldDescriptorProto
    for number, (field, ftype, label) in enumerate(
        (
            ("conversation_id", fields.TYPE_STRING, fields.LABEL_OPTIONAL),
            ("tenant_id", fields.TYPE_STRING, fields.LABEL_OPTIONAL),
            ("step", fields.TYPE_INT32, fields.LABEL_OPTIONAL),
            ("tags", fields.TYPE_STRING, fields.LABEL_REPEATED),
        ),
        start=1,
    ):
        msg.field.add(name=field, number=number, type=ftype, label=label)
    event = msg.options.Extensions[options_pb2.event]
    event.topic = topic
    event.key_field = "conversation_id"


def _fixture_file() -> descriptor_pb2.FileDescriptorProto:
    """A valid contract file shaped like agentflux's own: two events, one task, a
    priority enum and a dead-letter topic. Each test breaks one thing in it."""
    file = descriptor_pb2.FileDescriptorProto(
        name=FIXTURE_FILE,
        package="fixture.v1",
        syntax="proto3",
        dependency=[options_pb2.DESCRIPTOR.name],
    )
    file.options.Extensions[options_pb2.dead_letter_topic] = "fixture.dlq"
    level = file.enum_type.add(name="Level")
    for name, number, amqp in (("LEVEL_UNSPECIFIED", 0, 1), ("LEVEL_HIGH", 1, 9)):
        value = level.value.add(name=name, number=number)
        value.options.Extensions[options_pb2.amqp_priority] = amqp
    _add_event(file, "Started", "fixture.started")
    _add_event(file, "Finished", "fixture.finished")
    job = file.message_type.add(name="Job")
    job.field.add(
        name="job_id",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    task = job.options.Extensions[options_pb2.task]
    task.queue = "fixture.jobs"
    task.exchange = "fixture.tasks"
    task.max_priority = 9
    task.dead_letter_queue = "fixture.jobs.dlq"
    return file


def _load(
    file: descriptor_pb2.FileDescriptorProto,
) -> tuple[list[FileDescriptor], EnumDescriptor]:
    # A private pool: the broken types must not collide with, or leak into, the
    # default pool that the generated modules and every other test use.
    pool = DescriptorPool()
    for dep in (descriptor_pb2.DESCRIPTOR, options_pb2.DESCRIPTOR):
        proto = descriptor_pb2.FileDescriptorProto()
        dep.CopyToProto(proto)
        pool.Add(proto)
    pool.Add(file)
    loaded = pool.FindFileByName(file.name)
    return [loaded], loaded.enum_types_by_name["Level"]


def test_the_unbroken_fixture_is_accepted() -> None:
    # Without this, every refusal below could come from a fixture that is itself wrong.
    reg = build_registry(*_load(_fixture_file()))
    assert {n: (c.topic, c.key_field) for n, c in reg.events.items()} == {
        "fixture.v1.Started": ("fixture.started", "conversation_id"),
        "fixture.v1.Finished": ("fixture.finished", "conversation_id"),
    }
    job = reg.task("fixture.v1.Job")
    assert (job.queue, job.exchange, job.max_priority, job.dead_letter_queue) == (
        "fixture.jobs",
        "fixture.tasks",
        9,
        "fixture.jobs.dlq",
    )
    assert reg.dead_letter_topic == "fixture.dlq"
    assert dict(reg.amqp_priorities) == {0: 1, 1: 9}
    started = reg.event("fixture.v1.Started")
    assert started.key(started.message_class(conversation_id="c-1")) == b"c-1"


def _set_event(name: str, **values: str) -> Callable[[descriptor_pb2.FileDescriptorProto], None]:
    def mutate(file: descriptor_pb2.FileDescriptorProto) -> None:
        event = _message(file, name).options.Extensions[options_pb2.event]
        for key, value in values.items():
            setattr(event, key, value)

    return mutate


def _set_task(**values: object) -> Callable[[descriptor_pb2.FileDescriptorProto], None]:
    def mutate(file: descriptor_pb2.FileDescriptorProto) -> None:
        task = _message(file, "Job").options.Extensions[options_pb2.task]
        for key, value in values.items():
            setattr(task, key, value)

    return mutate


def _drop_dead_letter_topic(file: descriptor_pb2.FileDescriptorProto) -> None:
    file.options.ClearExtension(options_pb2.dead_letter_topic)


def _drop_amqp_priority(file: descriptor_pb2.FileDescriptorProto) -> None:
    file.enum_type[0].value[1].options.ClearExtension(options_pb2.amqp_priority)


def _dead_letter_topic_is_an_event_topic(file: descriptor_pb2.FileDescriptorProto) -> None:
    file.options.Extensions[options_pb2.dead_letter_topic] = "fixture.started"


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        pytest.param(
            _set_event("Started", key_field="conversation"),
            "fixture.v1.Started (agentflux.v1.event): key_field 'conversation' is not a field",
            id="key-field-missing",
        ),
        pytest.param(
            _set_event("Started", key_field="step"),
            "fixture.v1.Started (agentflux.v1.event): key_field 'step' must be a singular string",
            id="key-field-not-a-string",
        ),
        pytest.param(
            _set_event("Started", key_field="tags"),
            "fixture.v1.Started (agentflux.v1.event): key_field 'tags' must be a singular string",
            id="key-field-repeated",
        ),
        pytest.param(
            _set_event("Finished", topic="fixture.started"),
            "topic 'fixture.started' is named by both fixture.v1.Started and fixture.v1.Finished",
            id="two-events-one-topic",
        ),
        pytest.param(
            _set_event("Started", topic=""),
            "fixture.v1.Started (agentflux.v1.event): topic is empty",
            id="empty-topic",
        ),
        pytest.param(
            _set_task(max_priority=8),
            "fixture.v1.Job: max_priority 8 is below AMQP priorities [9]",
            id="max-priority-below-amqp-priority",
        ),
        pytest.param(
            _set_task(max_priority=256),
            "max_priority must be 1-255, not 256",
            id="max-priority-out-of-range",
        ),
        pytest.param(
            _set_task(queue=""),
            "fixture.v1.Job (agentflux.v1.task): queue is empty",
            id="empty-queue",
        ),
        pytest.param(
            _set_task(dead_letter_queue="fixture.jobs"),
            "queue 'fixture.jobs' is named by both fixture.v1.Job and fixture.v1.Job",
            id="dead-letter-queue-is-the-queue",
        ),
        pytest.param(
            _drop_dead_letter_topic,
            "expected one (agentflux.v1.dead_letter_topic), found []",
            id="no-dead-letter-topic",
        ),
        pytest.param(
            _dead_letter_topic_is_an_event_topic,
            "dead-letter topic 'fixture.started' is also the topic of fixture.v1.Started",
            id="dead-letter-topic-is-an-event-topic",
        ),
        pytest.param(
            _drop_amqp_priority,
            "fixture.v1.Level.LEVEL_HIGH: no (agentflux.v1.amqp_priority) option",
            id="priority-without-amqp-priority",
        ),
    ],
)
def test_broken_contracts_are_refused(
    mutate: Callable[[descriptor_pb2.FileDescriptorProto], None], error: str
) -> None:
    file = _fixture_file()
    mutate(file)
    files, priority = _load(file)
    with pytest.raises(ContractError) as excinfo:
        build_registry(files, priority)
    assert error in str(excinfo.value)
