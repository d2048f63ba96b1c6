package agentflux

import (
	"context"
	"errors"
	"io"
	"net"
	"regexp"
	"sync"
	"testing"
	"time"

	agentfluxv1 "github.com/agentflux/agentflux/gen/go/agentflux/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"
)

// gateway is an in-memory AgentGateway: a run of `total` events whose stream fails
// with `failWith` after `dropAfter` events, `drops` times.
type gateway struct {
	agentfluxv1.UnimplementedAgentGatewayServer
	mu        sync.Mutex
	total     int64
	dropAfter int
	drops     int
	failWith  codes.Code
	afters    []int64
	submitMD  metadata.MD
	submits   int
	failFirst int
}

func (g *gateway) Submit(ctx context.Context, req *agentfluxv1.SubmitRequest) (*agentfluxv1.SubmitResponse, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.submits++
	g.submitMD, _ = metadata.FromIncomingContext(ctx)
	if g.submits <= g.failFirst {
		return nil, status.Error(codes.Unavailable, "not yet")
	}
	if len(g.submitMD.Get("authorization")) == 0 {
		return nil, status.Error(codes.Unauthenticated, "no key")
	}
	_ = grpc.SetHeader(ctx, metadata.Pairs("x-correlation-id", g.submitMD.Get("x-correlation-id")[0], "x-request-id", "req-1"))
	return &agentfluxv1.SubmitResponse{Run: &agentfluxv1.Run{RunId: "run-1", Prompt: req.GetPrompt()}}, nil
}

func (g *gateway) StreamRun(req *agentfluxv1.StreamRunRequest, stream grpc.ServerStreamingServer[agentfluxv1.StreamRunResponse]) error {
	g.mu.Lock()
	g.afters = append(g.afters, req.GetAfterSequence())
	drop := g.drops > 0
	if drop {
		g.drops--
	}
	g.mu.Unlock()
	sent := 0
	for seq := req.GetAfterSequence() + 1; seq <= g.total; seq++ {
		if drop && sent == g.dropAfter {
			return status.Error(g.failWith, "connection lost")
		}
		ev := &agentfluxv1.StreamRunResponse{Sequence: seq}
		if seq == g.total {
			ev.Event = &agentfluxv1.StreamRunResponse_Finished{Finished: &agentfluxv1.RunFinished{}}
		} else {
			ev.Event = &agentfluxv1.StreamRunResponse_AnswerDelta{AnswerDelta: &agentfluxv1.AnswerDelta{Text: "x"}}
		}
		if err := stream.Send(ev); err != nil {
			return err
		}
		sent++
	}
	return nil
}

func serve(t *testing.T, g *gateway, opts ...Option) *Client {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	agentfluxv1.RegisterAgentGatewayServer(srv, g)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	dialer := func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }
	all := append([]Option{WithBackoff(time.Millisecond), WithDialOptions(grpc.WithContextDialer(dialer))}, opts...)
	c, err := Dial("passthrough:///gateway", all...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func sequences(t *testing.T, s *RunStream) []int64 {
	t.Helper()
	var got []int64
	for ev, err := range s.All() {
		if err != nil {
			t.Fatalf("after %v: %v", got, err)
		}
		got = append(got, ev.GetSequence())
	}
	return got
}

func TestStreamResumesAfterTheLastSequence(t *testing.T) {
	for _, code := range []codes.Code{codes.Unavailable, codes.Internal} {
		g := &gateway{total: 7, dropAfter: 2, drops: 2, failWith: code}
		c := serve(t, g)
		s := c.Stream(context.Background(), "run-1", 0)
		got := sequences(t, s)
		want := []int64{1, 2, 3, 4, 5, 6, 7}
		if len(got) != len(want) {
			t.Fatalf("%v: got %v", code, got)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("%v: got %v", code, got)
			}
		}
		if s.Resumes() != 2 || g.afters[1] != 2 || g.afters[2] != 4 {
			t.Errorf("%v: resumes %d afters %v", code, s.Resumes(), g.afters)
		}
		if _, err := s.Recv(); !errors.Is(err, io.EOF) {
			t.Errorf("after finished: %v", err)
		}
	}
}

func TestStreamGivesUpAfterItsRetries(t *testing.T) {
	g := &gateway{total: 9, dropAfter: 0, drops: 100, failWith: codes.Unavailable}
	c := serve(t, g, WithRetries(3))
	_, err := c.Stream(context.Background(), "run-1", 0).Recv()
	if status.Code(err) != codes.Unavailable || len(g.afters) != 4 {
		t.Errorf("err %v after %d calls", err, len(g.afters))
	}
}

func TestStreamDoesNotRetryOtherErrors(t *testing.T) {
	g := &gateway{total: 9, dropAfter: 1, drops: 1, failWith: codes.NotFound}
	c := serve(t, g)
	s := c.Stream(context.Background(), "run-1", 0)
	if ev, err := s.Recv(); err != nil || ev.GetSequence() != 1 {
		t.Fatal(ev, err)
	}
	if _, err := s.Recv(); status.Code(err) != codes.NotFound {
		t.Errorf("%v", err)
	}
}

func TestStreamFromASequenceAndClose(t *testing.T) {
	g := &gateway{total: 5}
	c := serve(t, g)
	s := c.Stream(context.Background(), "run-1", 3)
	if got := sequences(t, s); len(got) != 2 || got[0] != 4 {
		t.Errorf("got %v", got)
	}
	s = c.Stream(context.Background(), "run-1", 0)
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := s.Recv(); status.Code(err) != codes.Canceled {
		t.Errorf("after Close: %v", err)
	}
	if s.LastSequence() != 1 {
		t.Errorf("last %d", s.LastSequence())
	}
}

func TestSubmitSendsTheContextAndReadsTheEcho(t *testing.T) {
	g := &gateway{failFirst: 2}
	c := serve(t, g, WithAPIKey("k1"))
	sub, err := c.Submit(context.Background(), "hi", SubmitOptions{CorrelationID: "corr-1"})
	if err != nil {
		t.Fatal(err)
	}
	if sub.CorrelationID != "corr-1" || sub.RequestID != "req-1" || sub.Run.GetRunId() != "run-1" {
		t.Errorf("%+v", sub)
	}
	if g.submits != 3 {
		t.Errorf("%d submits", g.submits)
	}
	md := g.submitMD
	if md.Get("authorization")[0] != "Bearer k1" || md.Get("idempotency-key")[0] != sub.IdempotencyKey {
		t.Errorf("metadata %v", md)
	}
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(sub.IdempotencyKey) {
		t.Errorf("key %q", sub.IdempotencyKey)
	}
}

func TestSubmitWithoutAKey(t *testing.T) {
	c := serve(t, &gateway{})
	_, err := c.Submit(context.Background(), "hi", SubmitOptions{})
	if CodeName(err) != "UNAUTHENTICATED" {
		t.Errorf("%v", err)
	}
}

func TestErrorHelpers(t *testing.T) {
	st, _ := status.New(codes.ResourceExhausted, "slow down").WithDetails(
		&errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)},
		&errdetails.ErrorInfo{Reason: "RUNS_IN_FLIGHT"},
	)
	err := st.Err()
	if d, ok := RetryDelay(err); !ok || d != 1500*time.Millisecond {
		t.Errorf("delay %v %v", d, ok)
	}
	if Reason(err) != "RUNS_IN_FLIGHT" || CodeName(err) != "RESOURCE_EXHAUSTED" {
		t.Errorf("%q %q", Reason(err), CodeName(err))
	}
	if CodeName(status.Error(codes.Canceled, "")) != "CANCELLED" || CodeName(errors.New("x")) != "UNKNOWN" {
		t.Error("code names")
	}
}

func TestEventKind(t *testing.T) {
	ev := &agentfluxv1.StreamRunResponse{Event: &agentfluxv1.StreamRunResponse_ToolStarted{ToolStarted: &agentfluxv1.ToolStarted{}}}
	if EventKind(ev) != "tool_started" || EventKind(&agentfluxv1.StreamRunResponse{}) != "" {
		t.Error(EventKind(ev))
	}
}
