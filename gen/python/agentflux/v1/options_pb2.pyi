from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor
EVENT_FIELD_NUMBER: _ClassVar[int]
event: _descriptor.FieldDescriptor
TASK_FIELD_NUMBER: _ClassVar[int]
task: _descriptor.FieldDescriptor
DEAD_LETTER_TOPIC_FIELD_NUMBER: _ClassVar[int]
dead_letter_topic: _descriptor.FieldDescriptor
AMQP_PRIORITY_FIELD_NUMBER: _ClassVar[int]
amqp_priority: _descriptor.FieldDescriptor

class EventOptions(_message.Message):
    __slots__ = ("topic", "key_field")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_FIELD_NUMBER: _ClassVar[int]
    topic: str
    key_field: str
    def __init__(self, topic: _Optional[str] = ..., key_field: _Optional[str] = ...) -> None: ...

class TaskOptions(_message.Message):
    __slots__ = ("queue", "exchange", "max_priority", "dead_letter_queue")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_FIELD_NUMBER: _ClassVar[int]
    MAX_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_QUEUE_FIELD_NUMBER: _ClassVar[int]
    queue: str
    exchange: str
    max_priority: int
    dead_letter_queue: str
    def __init__(self, queue: _Optional[str] = ..., exchange: _Optional[str] = ..., max_priority: _Optional[int] = ..., dead_letter_queue: _Optional[str] = ...) -> None: ...
