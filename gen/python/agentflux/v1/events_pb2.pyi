import datetime

from agentflux.v1 import options_pb2 as _options_pb2
from agentflux.v1 import types_pb2 as _types_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentRequested(_message.Message):
    __slots__ = ("run_id", "tenant_id", "conversation_id", "prompt", "priority", "step", "limits", "previous_results", "request_time")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_RESULTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIME_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    tenant_id: str
    conversation_id: str
    prompt: str
    priority: _types_pb2.Priority
    step: int
    limits: _types_pb2.RunLimits
    previous_results: _containers.RepeatedCompositeFieldContainer[_types_pb2.ToolResult]
    request_time: _timestamp_pb2.Timestamp
    def __init__(self, run_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., prompt: _Optional[str] = ..., priority: _Optional[_Union[_types_pb2.Priority, str]] = ..., step: _Optional[int] = ..., limits: _Optional[_Union[_types_pb2.RunLimits, _Mapping]] = ..., previous_results: _Optional[_Iterable[_Union[_types_pb2.ToolResult, _Mapping]]] = ..., request_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ToolCalled(_message.Message):
    __slots__ = ("run_id", "tenant_id", "conversation_id", "step", "step_tool_count", "call", "result")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEP_TOOL_COUNT_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    tenant_id: str
    conversation_id: str
    step: int
    step_tool_count: int
    call: _types_pb2.ToolCall
    result: _types_pb2.ToolResult
    def __init__(self, run_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., step: _Optional[int] = ..., step_tool_count: _Optional[int] = ..., call: _Optional[_Union[_types_pb2.ToolCall, _Mapping]] = ..., result: _Optional[_Union[_types_pb2.ToolResult, _Mapping]] = ...) -> None: ...

class AgentCompleted(_message.Message):
    __slots__ = ("run_id", "tenant_id", "conversation_id", "status", "answer", "usage", "error_message", "step_count", "prompt", "complete_time")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_COUNT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_TIME_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    tenant_id: str
    conversation_id: str
    status: _types_pb2.CompletionStatus
    answer: _types_pb2.Answer
    usage: _types_pb2.Usage
    error_message: str
    step_count: int
    prompt: str
    complete_time: _timestamp_pb2.Timestamp
    def __init__(self, run_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., status: _Optional[_Union[_types_pb2.CompletionStatus, str]] = ..., answer: _Optional[_Union[_types_pb2.Answer, _Mapping]] = ..., usage: _Optional[_Union[_types_pb2.Usage, _Mapping]] = ..., error_message: _Optional[str] = ..., step_count: _Optional[int] = ..., prompt: _Optional[str] = ..., complete_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
