import datetime

from agentflux.v1 import options_pb2 as _options_pb2
from agentflux.v1 import types_pb2 as _types_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ToolTask(_message.Message):
    __slots__ = ("run_id", "tenant_id", "conversation_id", "step", "step_tool_count", "call", "priority", "attempt", "max_attempts", "timeout")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEP_TOOL_COUNT_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    tenant_id: str
    conversation_id: str
    step: int
    step_tool_count: int
    call: _types_pb2.ToolCall
    priority: _types_pb2.Priority
    attempt: int
    max_attempts: int
    timeout: _duration_pb2.Duration
    def __init__(self, run_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., step: _Optional[int] = ..., step_tool_count: _Optional[int] = ..., call: _Optional[_Union[_types_pb2.ToolCall, _Mapping]] = ..., priority: _Optional[_Union[_types_pb2.Priority, str]] = ..., attempt: _Optional[int] = ..., max_attempts: _Optional[int] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...
