// Package agentflux is a client of the agentflux gateway (the gRPC service
// agentflux.v1.AgentGateway): submit a prompt with its context headers, follow the
// run's events with a stream that resumes by itself after a dropped connection, look
// the run up and cancel it.
//
//	c, err := agentflux.Dial("127.0.0.1:50051", agentflux.WithAPIKey(key))
//	sub, err := c.Submit(ctx, "what is 6*7 then add 8", agentflux.SubmitOptions{})
//	s := c.Stream(ctx, sub.Run.GetRunId(), 0)
//	for ev, err := range s.All() { ... }
//	run, err := c.GetRun(ctx, sub.Run.GetRunId())
//
// Errors are gRPC status errors (google.golang.org/grpc/status); CodeName gives the
// canonical name of their code and RetryDelay the delay a RetryInfo detail asks for.
package agentflux

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"time"

	agentfluxv1 "github.com/agentflux/agentflux/gen/go/agentflux/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Metadata keys of the gateway (docs/wire-protocol.md).
const (
	MetadataAuthorization  = "authorization"
	MetadataCorrelationID  = "x-correlation-id"
	MetadataRequestID      = "x-request-id"
	MetadataIdempotencyKey = "idempotency-key"
	MetadataTraceparent    = "traceparent"
)

// DefaultRetries is how many times in a row a call is retried after a transient
// failure (UNAVAILABLE or INTERNAL) before its error is returned.
const DefaultRetries = 5

// Option configures a Client.
type Option func(*config)

type config struct {
	apiKey      string
	tls         *tls.Config
	retries     int
	backoff     time.Duration
	dialOptions []grpc.DialOption
}

// WithAPIKey presents key on every call, as `authorization: Bearer <key>`. The key
// names the caller's tenant.
func WithAPIKey(key string) Option { return func(c *config) { c.apiKey = key } }

// WithTLS speaks TLS with cfg (nil: plaintext, the default, for a local gateway). A
// client certificate in cfg is presented to a gateway that requires one.
func WithTLS(cfg *tls.Config) Option { return func(c *config) { c.tls = cfg } }

// WithRetries sets how many consecutive transient failures (UNAVAILABLE, INTERNAL) a
// stream resumes after, and Submit retries, before giving up (DefaultRetries).
func WithRetries(n int) Option { return func(c *config) { c.retries = max(n, 0) } }

// WithBackoff sets the first delay between retries; it doubles up to 16 times that.
func WithBackoff(d time.Duration) Option { return func(c *config) { c.backoff = d } }

// WithDialOptions passes further options to grpc.NewClient.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(c *config) { c.dialOptions = append(c.dialOptions, opts...) }
}

// Client is a connection to the gateway. It is safe for concurrent use.
type Client struct {
	conn    *grpc.ClientConn
	gateway agentfluxv1.AgentGatewayClient
	cfg     config
}

// Dial connects to the gateway at target (host:port). The connection is made lazily,
// on the first call.
func Dial(target string, opts ...Option) (*Client, error) {
	cfg := config{retries: DefaultRetries, backoff: 100 * time.Millisecond}
	for _, o := range opts {
		o(&cfg)
	}
	transport := insecure.NewCredentials()
	if cfg.tls != nil {
		transport = credentials.NewTLS(cfg.tls)
	}
	dial := []grpc.DialOption{grpc.WithTransportCredentials(transport), grpc.WithUserAgent("agentflux-go")}
	if cfg.apiKey != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(bearer{key: cfg.apiKey, secure: cfg.tls != nil}))
	}
	conn, err := grpc.NewClient(target, append(dial, cfg.dialOptions...)...)
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, gateway: agentfluxv1.NewAgentGatewayClient(conn), cfg: cfg}, nil
}

// Gateway is the generated client of every gateway call, over this connection and
// with its key (for the calls this package does not wrap: ListRuns, SearchResponses,
// ApproveToolCall, RejectToolCall).
func (c *Client) Gateway() agentfluxv1.AgentGatewayClient { return c.gateway }

// Close closes the connection; calls in flight end with CANCELED.
func (c *Client) Close() error { return c.conn.Close() }

// SubmitOptions are the optional parts of a submission.
type SubmitOptions struct {
	// ConversationID continues a conversation; empty starts a new one.
	ConversationID string
	// CorrelationID ties together everything the run causes (x-correlation-id).
	// Empty: a new one.
	CorrelationID string
	// IdempotencyKey makes the submission safe to retry: the same key returns the same
	// run, never a second one (idempotency-key). Empty: a new one, which Submit's own
	// retries reuse.
	IdempotencyKey string
	// Traceparent continues a W3C trace (traceparent). Optional.
	Traceparent string
	// Priority of the run; PRIORITY_UNSPECIFIED is normal.
	Priority agentfluxv1.Priority
	// Limits bound the run's work; nil or zero fields take the deployment's defaults.
	Limits *agentfluxv1.RunLimits
}

// Submitted is what Submit returns.
type Submitted struct {
	// Run is the run started, or found again for a repeated idempotency key.
	Run *agentfluxv1.Run
	// CorrelationID and RequestID are the gateway's echo (x-correlation-id,
	// x-request-id in the response headers).
	CorrelationID string
	RequestID     string
	// IdempotencyKey is the key sent.
	IdempotencyKey string
}

// Submit starts a run of prompt. It retries a transient failure with the same
// idempotency key, so a retry never starts a second run.
func (c *Client) Submit(ctx context.Context, prompt string, opts SubmitOptions) (*Submitted, error) {
	correlation := opts.CorrelationID
	if correlation == "" {
		correlation = NewID()
	}
	key := opts.IdempotencyKey
	if key == "" {
		key = NewID()
	}
	md := []string{MetadataCorrelationID, correlation, MetadataIdempotencyKey, key}
	if opts.Traceparent != "" {
		md = append(md, MetadataTraceparent, opts.Traceparent)
	}
	ctx = metadata.AppendToOutgoingContext(ctx, md...)
	req := &agentfluxv1.SubmitRequest{
		Prompt:         prompt,
		ConversationId: opts.ConversationID,
		Priority:       opts.Priority,
		Limits:         opts.Limits,
	}
	for failures := 0; ; failures++ {
		var header metadata.MD
		resp, err := c.gateway.Submit(ctx, req, grpc.Header(&header))
		if err == nil {
			return &Submitted{
				Run:            resp.GetRun(),
				CorrelationID:  last(header, MetadataCorrelationID),
				RequestID:      last(header, MetadataRequestID),
				IdempotencyKey: key,
			}, nil
		}
		if !transient(err) || failures >= c.cfg.retries {
			return nil, err
		}
		if werr := c.wait(ctx, failures, err); werr != nil {
			return nil, werr
		}
	}
}

// GetRun returns the current state of a run.
func (c *Client) GetRun(ctx context.Context, runID string) (*agentfluxv1.Run, error) {
	resp, err := c.gateway.GetRun(ctx, &agentfluxv1.GetRunRequest{RunId: runID})
	if err != nil {
		return nil, err
	}
	return resp.GetRun(), nil
}

// CancelRun cancels a run and returns once no tool of the run runs any more, with the
// run as it is then (RUN_STATUS_CANCELLING until every hop acknowledged, then
// RUN_STATUS_CANCELLED). reason is kept as the run's error message.
func (c *Client) CancelRun(ctx context.Context, runID, reason string) (*agentfluxv1.Run, error) {
	resp, err := c.gateway.CancelRun(ctx, &agentfluxv1.CancelRunRequest{RunId: runID, Reason: reason})
	if err != nil {
		return nil, err
	}
	return resp.GetRun(), nil
}

// wait sleeps before retry number failures+1: the delay the error's RetryInfo asks
// for, else an exponential backoff.
func (c *Client) wait(ctx context.Context, failures int, err error) error {
	delay := c.cfg.backoff << min(failures, 4)
	if asked, ok := RetryDelay(err); ok && asked > delay {
		delay = min(asked, 16*c.cfg.backoff)
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	case <-t.C:
		return nil
	}
}

// transient reports whether a call that failed with err may succeed if made again.
func transient(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.Internal:
		return true
	}
	return false
}

func last(md metadata.MD, key string) string {
	if v := md.Get(key); len(v) > 0 {
		return v[len(v)-1]
	}
	return ""
}

// NewID returns a new random UUID (version 4), a well-formed correlation id or
// idempotency key.
func NewID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("agentflux: no randomness: %v", err))
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// bearer presents the API key on every call.
type bearer struct {
	key    string
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{MetadataAuthorization: "Bearer " + b.key}, nil
}

// A key may travel in plaintext only to a gateway the caller chose to reach without
// TLS (a local one); with TLS configured, it never leaves without it.
func (b bearer) RequireTransportSecurity() bool { return b.secure }
