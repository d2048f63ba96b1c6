package agentflux

import (
	"context"
	"errors"
	"io"
	"iter"

	agentfluxv1 "github.com/agentflux/agentflux/gen/go/agentflux/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// RunStream is a run's events, read with Recv (or ranged over with All). When the
// connection drops, it opens a new StreamRun after the last sequence it delivered, so
// every event arrives exactly once and in order; it gives up after the client's
// retries of consecutive transient failures. It ends (io.EOF) after `finished`.
// One goroutine reads a RunStream; another stops it by cancelling the context given
// to Stream.
type RunStream struct {
	c        *Client
	ctx      context.Context
	cancel   context.CancelFunc
	runID    string
	last     int64
	call     grpc.ServerStreamingClient[agentfluxv1.StreamRunResponse]
	stop     context.CancelFunc
	failures int
	resumes  int
	err      error
}

// Stream follows a run from after the event with sequence afterSequence (0: from its
// first event). The call is opened by the first Recv.
func (c *Client) Stream(ctx context.Context, runID string, afterSequence int64) *RunStream {
	ctx, cancel := context.WithCancel(ctx)
	return &RunStream{c: c, ctx: ctx, cancel: cancel, runID: runID, last: afterSequence}
}

// Recv returns the next event. After `finished` it returns io.EOF; after Close, or
// when the stream's context ends, a CANCELED or DEADLINE_EXCEEDED status error.
func (s *RunStream) Recv() (*agentfluxv1.StreamRunResponse, error) {
	for s.err == nil {
		if s.call == nil {
			ctx, stop := context.WithCancel(s.ctx)
			call, err := s.c.gateway.StreamRun(ctx, &agentfluxv1.StreamRunRequest{RunId: s.runID, AfterSequence: s.last})
			if err != nil {
				stop()
				s.retry(err)
				continue
			}
			s.call, s.stop = call, stop
		}
		ev, err := s.call.Recv()
		if err != nil {
			s.drop()
			if errors.Is(err, io.EOF) {
				// The gateway ends a stream only after `finished`: an end before it is
				// a connection lost in a way that looked orderly (a proxy, a restart).
				err = status.Error(codes.Internal, "the stream ended before the run finished")
			}
			s.retry(err)
			continue
		}
		if seq := ev.GetSequence(); seq != 0 && seq <= s.last {
			continue // already delivered before a resume
		}
		s.failures = 0
		if seq := ev.GetSequence(); seq != 0 {
			s.last = seq
		}
		if ev.GetFinished() != nil {
			s.drop()
			s.err = io.EOF
		}
		return ev, nil
	}
	return nil, s.err
}

// All ranges over the stream's events until `finished` (then it stops) or an error
// (yielded last, with a nil event).
func (s *RunStream) All() iter.Seq2[*agentfluxv1.StreamRunResponse, error] {
	return func(yield func(*agentfluxv1.StreamRunResponse, error) bool) {
		for {
			ev, err := s.Recv()
			if errors.Is(err, io.EOF) {
				return
			}
			if !yield(ev, err) || err != nil {
				return
			}
		}
	}
}

// LastSequence is the sequence of the last event delivered (or the afterSequence
// the stream started from): where a new Stream resumes.
func (s *RunStream) LastSequence() int64 { return s.last }

// Resumes counts the calls opened again after a dropped one.
func (s *RunStream) Resumes() int { return s.resumes }

// Close ends the stream: the call is cancelled (its HTTP/2 stream is reset) and Recv
// returns CANCELED from then on.
func (s *RunStream) Close() {
	if s.err == nil {
		s.err = status.Error(codes.Canceled, "the stream was closed")
	}
	s.drop()
	s.cancel()
}

func (s *RunStream) drop() {
	if s.stop != nil {
		s.stop()
	}
	s.call, s.stop = nil, nil
}

// retry decides what follows a failed call: a wait and a new call, or the end.
func (s *RunStream) retry(err error) {
	if s.ctx.Err() != nil {
		s.err = status.FromContextError(s.ctx.Err()).Err()
		return
	}
	if !transient(err) || s.failures >= s.c.cfg.retries {
		s.err = err
		return
	}
	s.failures++
	if werr := s.c.wait(s.ctx, s.failures-1, err); werr != nil {
		s.err = werr
		return
	}
	s.resumes++
}

// EventKind is the name of the event an update carries ("accepted", "planned",
// "tool_started", ..., "finished"), as the oneof field of StreamRunResponse names it;
// "" when it carries none this client knows.
func EventKind(ev *agentfluxv1.StreamRunResponse) string {
	m := ev.ProtoReflect()
	oneof := m.Descriptor().Oneofs().ByName("event")
	if oneof == nil {
		return ""
	}
	if fd := m.WhichOneof(oneof); fd != nil {
		return string(fd.Name())
	}
	return ""
}
