"""proto-vendor/'s buf/validate/validate.proto is a hand-written subset of protovalidate's
schema. The gateway's rules are written against it but read by the `protovalidate`
package, which decodes them with the official schema: a name, number, type or oneof here
that differs from the official one would make a rule mean something else, or nothing.
Each is checked against the descriptor the installed package ships.

The second half checks `services.gateway._validation.validate` on the real contracts:
every field at fault named at once, by its path."""

from __future__ import annotations

from pathlib import Path

import pytest
from agentflux.v1 import gateway_pb2, types_pb2
from buf.validate import validate_pb2
from google.protobuf import descriptor_pb2
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet
from protovalidate._gen.buf.validate import validate_pb as official_pb

from interceptors import InvalidArgument
from services.gateway._validation import validate

REPO = Path(__file__).resolve().parents[2]
Fields = dict[str, tuple[int, int, int, str, str]]


def _official() -> descriptor_pb2.FileDescriptorProto:
    # protovalidate 2 carries its schema for its own protobuf runtime; the bytes are a
    # FileDescriptorProto all the same.
    return descriptor_pb2.FileDescriptorProto.FromString(official_pb.desc().proto.to_binary())


def _ours() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    validate_pb2.DESCRIPTOR.CopyToProto(proto)
    return proto


def _fields(message: descriptor_pb2.DescriptorProto) -> Fields:
    """Each field's number, label, type, type name and oneof (empty when none)."""
    return {
        f.name: (
            f.number,
            f.label,
            f.type,
            f.type_name,
            message.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else "",
        )
        for f in message.field
    }


def test_the_generated_module_is_the_subset_of_proto_vendor() -> None:
    # One definition of buf/validate/validate.proto in the process: ours, generated into
    # gen/python. Another package providing buf.validate.validate_pb2 would shadow it.
    assert Path(validate_pb2.__file__).resolve().is_relative_to(REPO / "gen" / "python")
    assert (REPO / "proto-vendor" / validate_pb2.DESCRIPTOR.name).is_file()


def test_file_name_package_and_syntax_are_the_official_ones() -> None:
    ours, official = _ours(), _official()
    assert (ours.name, ours.package) == (official.name, official.package)
    assert (ours.syntax or "proto2") == (official.syntax or "proto2")


def test_every_extension_is_the_official_one() -> None:
    official = {e.name: e for e in _official().extension}
    assert _ours().extension, "the subset declares no extension"
    for ext in _ours().extension:
        assert ext.name in official, ext.name
        want = official[ext.name]
        got = (ext.number, ext.label, ext.type, ext.type_name, ext.extendee)
        assert got == (want.number, want.label, want.type, want.type_name, want.extendee)


def test_every_message_field_is_the_official_one() -> None:
    official = {m.name: m for m in _official().message_type}
    for message in _ours().message_type:
        assert message.name in official, message.name
        want = _fields(official[message.name])
        for name, got in _fields(message).items():
            assert name in want, f"{message.name}.{name} is not in the official schema"
            # Number, label, type, type name and the oneof it belongs to.
            assert got == want[name], f"{message.name}.{name}"
        assert not message.nested_type, f"{message.name}: nested messages are not checked"


def test_every_enum_value_is_the_official_one() -> None:
    official = {e.name: {v.name: v.number for v in e.value} for e in _official().enum_type}
    for enum in _ours().enum_type:
        assert enum.name in official, enum.name
        for value in enum.value:
            assert official[enum.name].get(value.name) == value.number, value.name


def _unknown(message: Message) -> list[str]:
    """Paths of the fields of `message`, at any depth, its schema does not declare."""
    found = [message.DESCRIPTOR.full_name] if len(UnknownFieldSet(message)) else []
    for field, value in message.ListFields():
        if field.type == field.TYPE_MESSAGE:
            found += _unknown(value)
    return found


def test_the_contracts_use_only_rules_the_subset_declares() -> None:
    # Rules written in proto/ compile against the subset, so buf refuses one it lacks;
    # this catches generated code built from a different subset than proto-vendor/'s.
    used = 0
    for module in (gateway_pb2, types_pb2):
        for message in module.DESCRIPTOR.message_types_by_name.values():
            for field in message.fields:
                options = field.GetOptions()
                if options.HasExtension(validate_pb2.field):
                    used += 1
                    rules = options.Extensions[validate_pb2.field]
                    assert _unknown(rules) == [], field.full_name
    assert used, "no field of the contracts carries a rule"


# --- validate --------------------------------------------------------------------------


def _refused(message: object) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        validate(message)  # type: ignore[arg-type]
    return caught.value


def test_a_valid_request_passes() -> None:
    validate(
        gateway_pb2.SubmitRequest(
            prompt="what is 6*7?",
            conversation_id="c-1",
            request_id="r:1",
            priority=types_pb2.PRIORITY_HIGH,
            limits=types_pb2.RunLimits(max_steps=2, max_tokens=10),
        )
    )
    validate(gateway_pb2.ListRunsRequest())  # every zero value is a valid default


def test_every_field_at_fault_is_named_by_its_path() -> None:
    error = _refused(
        gateway_pb2.SubmitRequest(
            prompt="",
            conversation_id="no spaces",
            priority=99,  # type: ignore[arg-type]
            limits=types_pb2.RunLimits(max_steps=65, max_tokens=-1),
        )
    )
    fields = [field for field, _ in error.violations]
    assert sorted(fields) == sorted(
        ["prompt", "conversation_id", "priority", "limits.max_steps", "limits.max_tokens"]
    )
    assert all(description for _, description in error.violations)
    # The first violation is also the error's own field, as for a single one.
    assert (error.field, error.description) == error.violations[0]


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (gateway_pb2.SubmitRequest(prompt="x" * (32 * 1024 + 1)), "prompt"),
        (gateway_pb2.SubmitRequest(prompt="x", request_id="x" * 129), "request_id"),
        (gateway_pb2.StreamRunRequest(), "run_id"),
        (gateway_pb2.StreamRunRequest(run_id="r", after_event_id="yesterday"), "after_event_id"),
        (gateway_pb2.StreamRunRequest(run_id="r", after_sequence=-1), "after_sequence"),
        (gateway_pb2.GetRunRequest(run_id="a b"), "run_id"),
        (gateway_pb2.ListRunsRequest(page_size=101), "page_size"),
        (gateway_pb2.ListRunsRequest(status=42), "status"),  # type: ignore[arg-type]
        (gateway_pb2.CancelRunRequest(run_id="r", reason="x" * 1025), "reason"),
        (gateway_pb2.ApproveToolCallRequest(run_id="r"), "tool_call_id"),
        (gateway_pb2.RejectToolCallRequest(run_id="r", tool_call_id="-c"), "tool_call_id"),
        (gateway_pb2.SearchResponsesRequest(query="q", page_size=-1), "page_size"),
        (gateway_pb2.SearchResponsesRequest(), "query"),
    ],
)
def test_each_rule_names_its_field(message: object, field: str) -> None:
    assert [f for f, _ in _refused(message).violations] == [field]


def test_go_code_imports_protovalidates_own_package() -> None:
    # Go keeps one registry per program: generated code that carried its own copy of
    # buf/validate/validate.proto would clash with protovalidate-go at start-up.
    ours, official = _ours().options, _official().options
    assert ours.go_package == official.go_package
    assert ours.java_outer_classname == official.java_outer_classname
    assert ours.java_multiple_files == official.java_multiple_files
