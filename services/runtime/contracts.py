"""Contract registry: where each message travels, read from the proto options.

The `.proto` files say which Kafka topic carries an event and which field keys it
(`(agentflux.v1.event)`), which RabbitMQ exchange and queue carry a task
(`(agentflux.v1.task)`), and which AMQP priority a `Priority` value maps to. This
module reads those options from the generated descriptors, so no topic or queue name
is written twice in code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from types import ModuleType

from agentflux.v1 import events_pb2, options_pb2, tasks_pb2, types_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, FileDescriptor
from google.protobuf.message import Message

__all__ = [
    "ContractError",
    "ContractRegistry",
    "EventContract",
    "TaskContract",
    "registry",
]

CONTRACT_MODULES: tuple[ModuleType, ...] = (events_pb2, tasks_pb2)


class ContractError(Exception):
    """The contracts contradict themselves (a missing key field, a topic used twice, ...)."""


@dataclass(frozen=True, slots=True)
class EventContract:
    """An event message type bound to its Kafka topic and record-key field."""

    type_name: str
    message_class: type[Message]
    topic: str
    key_field: str

    def key(self, event: Message) -> bytes:
        """The Kafka record key of `event`: its key field, UTF-8 encoded."""
        if event.DESCRIPTOR.full_name != self.type_name:
            raise TypeError(f"{event.DESCRIPTOR.full_name} is not {self.type_name}")
        value: str = getattr(event, self.key_field)
        if not value:
            # An empty key sends every such event to one partition and loses the
            # per-conversation order the key exists for: refuse it at the producer.
            raise ValueError(f"{self.type_name}.{self.key_field} is empty; it is the Kafka key")
        return value.encode()


@dataclass(frozen=True, slots=True)
class TaskContract:
    """A task message type bound to its RabbitMQ exchange and queues."""

    type_name: str
    message_class: type[Message]
    exchange: str
    queue: str
    max_priority: int
    dead_letter_queue: str

    @property
    def routing_key(self) -> str:
        """Routing key on `exchange`: the queue name (direct exchange)."""
        return self.queue


@dataclass(frozen=True)
class ContractRegistry:
    """Every event and task contract, looked up by type name or by destination."""

    events: Mapping[str, EventContract]
    tasks: Mapping[str, TaskContract]
    dead_letter_topic: str
    amqp_priorities: Mapping[int, int]

    @property
    def topics(self) -> list[str]:
        """Topics named by event contracts, in a stable order."""
        return sorted(c.topic for c in self.events.values())

    def event(self, message: Message | type[Message] | str) -> EventContract:
        """The contract of an event, by instance, class or full type name."""
        name = _type_name(message)
        try:
            return self.events[name]
        except KeyError:
            raise KeyError(
                f"{name} is not an event contract (no (agentflux.v1.event) option)"
            ) from None

    def event_for_topic(self, topic: str) -> EventContract:
        """The contract of the one event type carried by `topic`."""
        for contract in self.events.values():
            if contract.topic == topic:
                return contract
        raise KeyError(f"no event contract names topic {topic!r}")

    def task(self, message: Message | type[Message] | str) -> TaskContract:
        """The contract of a task, by instance, class or full type name."""
        name = _type_name(message)
        try:
            return self.tasks[name]
        except KeyError:
            raise KeyError(
                f"{name} is not a task contract (no (agentflux.v1.task) option)"
            ) from None

    def amqp_priority(self, priority: int) -> int:
        """AMQP message priority for a `agentflux.v1.Priority` value."""
        try:
            return self.amqp_priorities[priority]
        except KeyError:
            raise ValueError(f"{priority} is not a agentflux.v1.Priority value") from None


def _type_name(message: Message | type[Message] | str) -> str:
    return message if isinstance(message, str) else message.DESCRIPTOR.full_name


def _messages(file: FileDescriptor) -> Iterable[Descriptor]:
    # Nested messages too: an option on one must not be silently ignored.
    for desc in file.message_types_by_name.values():
        yield desc
        yield from _nested(desc)


def _nested(desc: Descriptor) -> Iterable[Descriptor]:
    for inner in desc.nested_types:
        yield inner
        yield from _nested(inner)


def _event_of(desc: Descriptor) -> EventContract | None:
    opts = desc.GetOptions()
    if not opts.HasExtension(options_pb2.event):
        return None
    ev = opts.Extensions[options_pb2.event]
    where = f"{desc.full_name} (agentflux.v1.event)"
    if not ev.topic:
        raise ContractError(f"{where}: topic is empty")
    field = desc.fields_by_name.get(ev.key_field)
    if field is None:
        raise ContractError(f"{where}: key_field {ev.key_field!r} is not a field of the message")
    if field.type != FieldDescriptor.TYPE_STRING or field.is_repeated:
        raise ContractError(f"{where}: key_field {ev.key_field!r} must be a singular string")
    cls = message_factory.GetMessageClass(desc)
    return EventContract(desc.full_name, cls, ev.topic, ev.key_field)


def _task_of(desc: Descriptor) -> TaskContract | None:
    opts = desc.GetOptions()
    if not opts.HasExtension(options_pb2.task):
        return None
    t = opts.Extensions[options_pb2.task]
    where = f"{desc.full_name} (agentflux.v1.task)"
    for name in ("queue", "exchange", "dead_letter_queue"):
        if not getattr(t, name):
            raise ContractError(f"{where}: {name} is empty")
    if not 1 <= t.max_priority <= 255:
        raise ContractError(f"{where}: max_priority must be 1-255, not {t.max_priority}")
    cls = message_factory.GetMessageClass(desc)
    return TaskContract(
        desc.full_name, cls, t.exchange, t.queue, t.max_priority, t.dead_letter_queue
    )


def _priorities(enum: EnumDescriptor) -> dict[int, int]:
    out = {}
    for value in enum.values:
        opts = value.GetOptions()
        if not opts.HasExtension(options_pb2.amqp_priority):
            raise ContractError(
                f"{enum.full_name}.{value.name}: no (agentflux.v1.amqp_priority) option"
            )
        out[value.number] = opts.Extensions[options_pb2.amqp_priority]
    return out


def build_registry(
    files: Iterable[FileDescriptor], priority_enum: EnumDescriptor
) -> ContractRegistry:
    """Reads and checks the contracts declared in `files`."""
    events: dict[str, EventContract] = {}
    tasks: dict[str, TaskContract] = {}
    dead_letter_topics: set[str] = set()
    for file in files:
        fopts = file.GetOptions()
        if fopts.HasExtension(options_pb2.dead_letter_topic):
            dead_letter_topics.add(fopts.Extensions[options_pb2.dead_letter_topic])
        for desc in _messages(file):
            if (ev := _event_of(desc)) is not None:
                events[ev.type_name] = ev
            if (task := _task_of(desc)) is not None:
                tasks[task.type_name] = task

    by_topic: dict[str, str] = {}
    for ev in events.values():
        if ev.topic in by_topic:
            raise ContractError(
                f"topic {ev.topic!r} is named by both {by_topic[ev.topic]} and {ev.type_name}"
            )
        by_topic[ev.topic] = ev.type_name
    by_queue: dict[str, str] = {}
    for task in tasks.values():
        for queue in (task.queue, task.dead_letter_queue):
            if queue in by_queue:
                raise ContractError(
                    f"queue {queue!r} is named by both {by_queue[queue]} and {task.type_name}"
                )
            by_queue[queue] = task.type_name
    if len(dead_letter_topics) != 1:
        raise ContractError(
            f"expected one (agentflux.v1.dead_letter_topic), found {sorted(dead_letter_topics)}"
        )
    (dlq,) = dead_letter_topics
    if dlq in by_topic:
        raise ContractError(f"dead-letter topic {dlq!r} is also the topic of {by_topic[dlq]}")
    priorities = _priorities(priority_enum)
    for task in tasks.values():
        too_high = {p for p in priorities.values() if p > task.max_priority}
        if too_high:
            raise ContractError(
                f"{task.type_name}: max_priority {task.max_priority} is below AMQP "
                f"priorities {sorted(too_high)} of agentflux.v1.Priority"
            )
    return ContractRegistry(events, tasks, dlq, priorities)


@cache
def registry() -> ContractRegistry:
    """The registry of agentflux's own contracts (read once, then cached)."""
    return build_registry((m.DESCRIPTOR for m in CONTRACT_MODULES), types_pb2.Priority.DESCRIPTOR)
