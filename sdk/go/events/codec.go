package events

import (
	"errors"
	"fmt"
	"mime"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// Header names of a contract record (docs/wire-protocol.md).
const (
	HeaderSpecVersion    = "ce_specversion"
	HeaderType           = "ce_type"
	HeaderSource         = "ce_source"
	HeaderID             = "ce_id"
	HeaderTime           = "ce_time"
	HeaderContentType    = "content-type"
	HeaderCorrelationID  = "ce_correlationid"
	HeaderTenantID       = "ce_tenantid"
	HeaderRunID          = "ce_runid"
	HeaderIdempotencyKey = "ce_idempotencykey"
	HeaderTraceparent    = "traceparent"
)

// Content types a record's payload may have.
const (
	ContentTypeProtobuf  = "application/protobuf"
	ContentTypeXProtobuf = "application/x-protobuf"
	ContentTypeJSON      = "application/json"
)

// SpecVersion is the CloudEvents version records follow.
const SpecVersion = "1.0"

// DefaultSource is the ce_source of records encoded without one.
const DefaultSource = "/agentflux/sdk/go"

// EncodeOptions are the attributes of a record other than its payload. Empty fields
// take the defaults noted.
type EncodeOptions struct {
	// Namespace prefixes the topic (the deployment's AGENTFLUX_NAMESPACE).
	Namespace string
	// Source is ce_source, a URI reference naming the producer. Default DefaultSource.
	Source string
	// ID is ce_id, the record's identity for dedupe (with Source). Default: NewID().
	ID string
	// Time is ce_time. Default: now.
	Time time.Time
	// ContentType is ContentTypeProtobuf (the default) or ContentTypeJSON.
	ContentType string
	// CorrelationID is ce_correlationid. Default: NewID() (this producer is the edge).
	CorrelationID string
	// IdempotencyKey is ce_idempotencykey: the identity consumers dedupe on. Optional.
	IdempotencyKey string
	// Traceparent continues a trace. Default: a new trace.
	Traceparent *Traceparent
}

// Encode makes the Kafka record of a contract event: its topic and key from the
// message's (agentflux.v1.event) option and exactly the headers the wire protocol
// documents. ce_tenantid and ce_runid come from the payload's tenant_id and run_id.
func Encode(msg proto.Message, opts EncodeOptions) (*kgo.Record, error) {
	m := msg.ProtoReflect()
	topic, err := TopicOf(m.Descriptor())
	if err != nil {
		return nil, err
	}
	key := m.Get(topic.KeyField).String()
	if key == "" {
		return nil, fmt.Errorf("%s.%s is empty: it is the record key, which keeps related events in one partition", topic.TypeName(), topic.KeyField.Name())
	}
	contentType := opts.ContentType
	if contentType == "" {
		contentType = ContentTypeProtobuf
	}
	var value []byte
	switch contentType {
	case ContentTypeProtobuf, ContentTypeXProtobuf:
		value, err = proto.MarshalOptions{Deterministic: true}.Marshal(msg)
	case ContentTypeJSON:
		value, err = protojson.Marshal(msg)
	default:
		return nil, fmt.Errorf("content type %q: want %s or %s", contentType, ContentTypeProtobuf, ContentTypeJSON)
	}
	if err != nil {
		return nil, fmt.Errorf("encoding %s: %w", topic.TypeName(), err)
	}
	source := or(opts.Source, DefaultSource)
	id := or(opts.ID, NewID())
	if err := CheckEventID(HeaderID, id); err != nil {
		return nil, err
	}
	correlation := or(opts.CorrelationID, NewID())
	if err := CheckID(HeaderCorrelationID, correlation); err != nil {
		return nil, err
	}
	when := opts.Time
	if when.IsZero() {
		when = time.Now()
	}
	trace := NewTraceparent()
	if opts.Traceparent != nil {
		trace = *opts.Traceparent
	}
	headers := []kgo.RecordHeader{
		{Key: HeaderSpecVersion, Value: []byte(SpecVersion)},
		{Key: HeaderType, Value: []byte(topic.TypeName())},
		{Key: HeaderSource, Value: []byte(source)},
		{Key: HeaderID, Value: []byte(id)},
		{Key: HeaderTime, Value: []byte(when.UTC().Format("2006-01-02T15:04:05.000000Z07:00"))},
		{Key: HeaderContentType, Value: []byte(contentType)},
		{Key: HeaderCorrelationID, Value: []byte(correlation)},
	}
	// Payload values become headers: they are checked here, at their source, rather
	// than dead-lettered one hop downstream.
	if tenant := stringField(m, "tenant_id"); tenant != "" {
		if err := CheckTenantID("tenant_id", tenant); err != nil {
			return nil, err
		}
		headers = append(headers, kgo.RecordHeader{Key: HeaderTenantID, Value: []byte(tenant)})
	}
	if run := stringField(m, "run_id"); run != "" {
		if err := CheckID("run_id", run); err != nil {
			return nil, err
		}
		headers = append(headers, kgo.RecordHeader{Key: HeaderRunID, Value: []byte(run)})
	}
	if opts.IdempotencyKey != "" {
		if err := CheckID(HeaderIdempotencyKey, opts.IdempotencyKey); err != nil {
			return nil, err
		}
		headers = append(headers, kgo.RecordHeader{Key: HeaderIdempotencyKey, Value: []byte(opts.IdempotencyKey)})
	}
	headers = append(headers, kgo.RecordHeader{Key: HeaderTraceparent, Value: []byte(trace.String())})
	return &kgo.Record{
		Topic:   topic.In(opts.Namespace),
		Key:     []byte(key),
		Value:   value,
		Headers: headers,
	}, nil
}

// Event is a decoded contract record.
type Event struct {
	// Type is ce_type, the payload's full protobuf name.
	Type string
	// Message is the payload, of the Go type registered for Type.
	Message proto.Message
	// ID, Source, Time and ContentType are the CloudEvents attributes (Time is zero
	// when ce_time is absent or not RFC 3339).
	ID          string
	Source      string
	Time        time.Time
	ContentType string
	// The context headers; TenantID and RunID fall back to the payload's fields.
	CorrelationID  string
	IdempotencyKey string
	TenantID       string
	RunID          string
	Traceparent    string
}

// ErrUnknownType is wrapped by Decode's error when ce_type is missing or names no
// registered message.
var ErrUnknownType = errors.New("unknown ce_type")

// ErrUnsupportedContentType is wrapped by Decode's error for a content type that is
// neither protobuf nor JSON.
var ErrUnsupportedContentType = errors.New("unsupported content type")

// Decode reads a record: the payload's type from its ce_type header (looked up in the
// registered Go types), the payload by its content-type (protobuf when absent, or
// proto3 JSON), and the context headers.
func Decode(rec *kgo.Record) (*Event, error) {
	h := Headers(rec)
	typeName := h[HeaderType]
	if typeName == "" {
		return nil, fmt.Errorf("%w: the record has no %s header", ErrUnknownType, HeaderType)
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(protoreflect.FullName(typeName))
	if err != nil {
		return nil, fmt.Errorf("%w: %s names no known message", ErrUnknownType, clip(typeName))
	}
	contentType, err := mediaType(h[HeaderContentType])
	if err != nil {
		return nil, err
	}
	msg := mt.New().Interface()
	switch contentType {
	case ContentTypeProtobuf, ContentTypeXProtobuf:
		err = proto.Unmarshal(rec.Value, msg)
	case ContentTypeJSON:
		// A newer producer's fields are skipped, as protobuf decoding skips them.
		err = protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(rec.Value, msg)
	}
	if err != nil {
		return nil, fmt.Errorf("undecodable %s payload as %s: %w", contentType, typeName, err)
	}
	ev := &Event{
		Type:           typeName,
		Message:        msg,
		ID:             h[HeaderID],
		Source:         h[HeaderSource],
		ContentType:    contentType,
		CorrelationID:  h[HeaderCorrelationID],
		IdempotencyKey: h[HeaderIdempotencyKey],
		TenantID:       or(h[HeaderTenantID], stringField(msg.ProtoReflect(), "tenant_id")),
		RunID:          or(h[HeaderRunID], stringField(msg.ProtoReflect(), "run_id")),
		Traceparent:    h[HeaderTraceparent],
	}
	if t, err := time.Parse(time.RFC3339Nano, h[HeaderTime]); err == nil {
		ev.Time = t
	}
	return ev, nil
}

// Headers returns a record's headers by name; of a repeated header, the last wins.
func Headers(rec *kgo.Record) map[string]string {
	out := make(map[string]string, len(rec.Headers))
	for _, h := range rec.Headers {
		out[h.Key] = string(h.Value)
	}
	return out
}

// Partitioner places keyed records as the mesh's own producers do: Kafka's
// partitioner, murmur2 of the key modulo the partition count (the Java client's
// default; librdkafka's murmur2_random), so events of one conversation share a
// partition whichever producer wrote them.
func Partitioner() kgo.Partitioner {
	return kgo.StickyKeyPartitioner(nil) // nil: kgo.KafkaHasher(murmur2)
}

func mediaType(value string) (string, error) {
	if strings.TrimSpace(value) == "" {
		return ContentTypeProtobuf, nil
	}
	mt, _, err := mime.ParseMediaType(value)
	switch {
	case err != nil:
	case mt == ContentTypeProtobuf, mt == ContentTypeXProtobuf, mt == ContentTypeJSON:
		return mt, nil
	}
	return "", fmt.Errorf("%w %q: want %s, %s or %s", ErrUnsupportedContentType, clip(value), ContentTypeProtobuf, ContentTypeXProtobuf, ContentTypeJSON)
}

func stringField(m protoreflect.Message, name protoreflect.Name) string {
	fd := m.Descriptor().Fields().ByName(name)
	if fd == nil || fd.Kind() != protoreflect.StringKind || fd.Cardinality() == protoreflect.Repeated {
		return ""
	}
	return m.Get(fd).String()
}

func or(value, fallback string) string {
	if value != "" {
		return value
	}
	return fallback
}
