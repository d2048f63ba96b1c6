package events

import (
	"errors"
	"strings"
	"testing"
	"time"

	agentfluxv1 "github.com/agentflux/agentflux/gen/go/agentflux/v1"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"
)

func TestTopicsComeFromTheContractOptions(t *testing.T) {
	all, err := Topics()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"agent.completed":   "agentflux.v1.AgentCompleted",
		"agent.requested":   "agentflux.v1.AgentRequested",
		"agent.tool_called": "agentflux.v1.ToolCalled",
	}
	if len(all) != len(want) {
		t.Fatalf("got %d topics, want %d: %v", len(all), len(want), all)
	}
	for _, topic := range all {
		if want[topic.Name] != topic.TypeName() {
			t.Errorf("topic %s carries %s, want %s", topic.Name, topic.TypeName(), want[topic.Name])
		}
		if topic.KeyField.Name() != "conversation_id" {
			t.Errorf("topic %s is keyed by %s", topic.Name, topic.KeyField.Name())
		}
	}
	if _, err := TopicOf((&agentfluxv1.Run{}).ProtoReflect().Descriptor()); err == nil {
		t.Error("Run is no contract event")
	}
}

func request() *agentfluxv1.AgentRequested {
	return &agentfluxv1.AgentRequested{RunId: "run-1", TenantId: "acme", ConversationId: "conv-1", Prompt: "what is 6*7"}
}

func TestEncodeWritesExactlyTheDocumentedHeaders(t *testing.T) {
	tp := Traceparent{TraceID: strings.Repeat("ab", 16), ParentID: strings.Repeat("cd", 8), Flags: "01"}
	when := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	rec, err := Encode(request(), EncodeOptions{
		Namespace: "ns.", Source: "/tests", ID: "e-1", Time: when, CorrelationID: "corr-1",
		IdempotencyKey: "run-1:requested", Traceparent: &tp,
	})
	if err != nil {
		t.Fatal(err)
	}
	if rec.Topic != "ns.agent.requested" || string(rec.Key) != "conv-1" {
		t.Fatalf("topic %q key %q", rec.Topic, rec.Key)
	}
	want := map[string]string{
		"ce_specversion":    "1.0",
		"ce_type":           "agentflux.v1.AgentRequested",
		"ce_source":         "/tests",
		"ce_id":             "e-1",
		"ce_time":           "2026-01-02T03:04:05.000006Z",
		"content-type":      "application/protobuf",
		"ce_correlationid":  "corr-1",
		"ce_tenantid":       "acme",
		"ce_runid":          "run-1",
		"ce_idempotencykey": "run-1:requested",
		"traceparent":       "00-" + tp.TraceID + "-" + tp.ParentID + "-01",
	}
	if len(rec.Headers) != len(want) {
		t.Fatalf("headers %v, want %v", rec.Headers, want)
	}
	for k, v := range Headers(rec) {
		if want[k] != v {
			t.Errorf("header %s = %q, want %q", k, v, want[k])
		}
	}
}

func TestEncodeDefaultsAndChecks(t *testing.T) {
	rec, err := Encode(request(), EncodeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	h := Headers(rec)
	if h[HeaderSource] != DefaultSource || len(h[HeaderID]) != 32 || len(h[HeaderCorrelationID]) != 32 {
		t.Errorf("defaults: %v", h)
	}
	if _, err := ParseTraceparent(h[HeaderTraceparent]); err != nil {
		t.Error(err)
	}
	if _, ok := h[HeaderIdempotencyKey]; ok {
		t.Error("no idempotency key was given")
	}
	noKey := request()
	noKey.ConversationId = ""
	if _, err := Encode(noKey, EncodeOptions{}); err == nil {
		t.Error("an event without its key field encoded")
	}
	if _, err := Encode(request(), EncodeOptions{CorrelationID: "-bad"}); err == nil {
		t.Error("a malformed correlation id encoded")
	}
	badTenant := request()
	badTenant.TenantId = "a.b"
	if _, err := Encode(badTenant, EncodeOptions{}); err == nil {
		t.Error("a malformed tenant id encoded")
	}
	if _, err := Encode(request(), EncodeOptions{ContentType: "text/plain"}); err == nil {
		t.Error("an unsupported content type encoded")
	}
}

func TestDecodeRoundTripsProtobufAndJSON(t *testing.T) {
	for _, ct := range []string{ContentTypeProtobuf, ContentTypeJSON} {
		rec, err := Encode(request(), EncodeOptions{ContentType: ct, CorrelationID: "c-1"})
		if err != nil {
			t.Fatal(err)
		}
		ev, err := Decode(rec)
		if err != nil {
			t.Fatalf("%s: %v", ct, err)
		}
		if !proto.Equal(ev.Message, request()) {
			t.Errorf("%s: decoded %v", ct, ev.Message)
		}
		if ev.Type != "agentflux.v1.AgentRequested" || ev.CorrelationID != "c-1" || ev.RunID != "run-1" || ev.TenantID != "acme" || ev.ContentType != ct {
			t.Errorf("%s: %+v", ct, ev)
		}
		if ev.Time.IsZero() {
			t.Errorf("%s: ce_time not read", ct)
		}
	}
}

func TestDecodeByCeTypeAndContentType(t *testing.T) {
	value, _ := proto.Marshal(&agentfluxv1.AgentCompleted{RunId: "r", ConversationId: "c"})
	rec := &kgo.Record{Value: value, Headers: []kgo.RecordHeader{
		{Key: HeaderType, Value: []byte("agentflux.v1.Nothing")},
		{Key: HeaderType, Value: []byte("agentflux.v1.AgentCompleted")}, // the last one wins
	}}
	ev, err := Decode(rec)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := ev.Message.(*agentfluxv1.AgentCompleted); !ok || ev.RunID != "r" {
		t.Errorf("decoded %T %+v", ev.Message, ev)
	}
	rec.Headers = []kgo.RecordHeader{{Key: HeaderType, Value: []byte("agentflux.v1.Nothing")}}
	if _, err := Decode(rec); !errors.Is(err, ErrUnknownType) {
		t.Errorf("unknown type: %v", err)
	}
	rec.Headers = nil
	if _, err := Decode(rec); !errors.Is(err, ErrUnknownType) {
		t.Errorf("no type: %v", err)
	}
	rec.Headers = []kgo.RecordHeader{
		{Key: HeaderType, Value: []byte("agentflux.v1.AgentCompleted")},
		{Key: HeaderContentType, Value: []byte("text/csv")},
	}
	if _, err := Decode(rec); !errors.Is(err, ErrUnsupportedContentType) {
		t.Errorf("csv: %v", err)
	}
	rec.Headers[1].Value = []byte("application/json; charset=utf-8")
	rec.Value = []byte(`{"runId":"r2","conversationId":"c","aFieldOfLater":1}`)
	if ev, err := Decode(rec); err != nil || ev.RunID != "r2" {
		t.Errorf("json with parameters and an unknown field: %v %v", ev, err)
	}
	rec.Value = []byte(`{"runId":`)
	if _, err := Decode(rec); err == nil {
		t.Error("undecodable JSON decoded")
	}
}

func TestTraceparent(t *testing.T) {
	good := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	tp, err := ParseTraceparent(good)
	if err != nil || tp.String() != good || !tp.Sampled() {
		t.Fatalf("%v %v", tp, err)
	}
	child := tp.Child()
	if child.TraceID != tp.TraceID || child.ParentID == tp.ParentID || child.Flags != "01" {
		t.Errorf("child %v", child)
	}
	if _, err := ParseTraceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-follows"); err != nil {
		t.Errorf("a later version: %v", err)
	}
	for _, bad := range []string{
		"",
		"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"00-00000000000000000000000000000000-b7ad6b7169203331-01",
		"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
		"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
		"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
		"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",
	} {
		if _, err := ParseTraceparent(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
	fresh := NewTraceparent()
	if _, err := ParseTraceparent(fresh.String()); err != nil {
		t.Error(err)
	}
}

func TestIDs(t *testing.T) {
	for _, ok := range []string{"a", "run-1:requested", strings.Repeat("x", 128), NewID()} {
		if err := CheckID("id", ok); err != nil {
			t.Error(err)
		}
	}
	for _, bad := range []string{"", "-a", "a b", strings.Repeat("x", 129)} {
		if CheckID("id", bad) == nil {
			t.Errorf("%q passed", bad)
		}
	}
	if CheckTenantID("t", "a.b") == nil || CheckTenantID("t", "acme_1") != nil {
		t.Error("tenant ids")
	}
	if CheckEventID("e", "orders/2026/7") != nil || CheckEventID("e", " x") == nil || CheckEventID("e", "a\x01") == nil {
		t.Error("event ids")
	}
}

func TestPartitionerMatchesTheMesh(t *testing.T) {
	// Kafka's partitioner: murmur2 of the key, sign bit cleared, mod partitions;
	// murmur2("conv-1") = 0x5a6fb51c (the partition librdkafka's murmur2_random, which
	// the mesh uses, gives it).
	p := Partitioner().ForTopic("t")
	rec := &kgo.Record{Key: []byte("conv-1")}
	got := p.Partition(rec, 6)
	if want := int(uint32(0x5a6fb51c) & 0x7fffffff % 6); got != want {
		t.Errorf("partition %d, want %d", got, want)
	}
}
