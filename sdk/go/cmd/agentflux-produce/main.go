// Command agentflux-produce starts a run from outside the gateway: it publishes one
// agentflux.v1.AgentRequested (step 0 of a new run) to a deployment's
// agent.requested topic, with the headers of docs/wire-protocol.md and nothing else,
// and prints where it went as a JSON line.
//
//	agentflux-produce --brokers HOST:PORT --namespace NS --tenant T --prompt P
//	    [--conversation C] [--run-id R] [--correlation-id C] [--traceparent TP]
//	    [--content-type application/protobuf|application/json] [--source URI]
//
// It continues the trace of --traceparent (as a new span of it), or starts one.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	agentfluxv1 "github.com/agentflux/agentflux/gen/go/agentflux/v1"
	"github.com/agentflux/agentflux/sdk/go/events"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type produced struct {
	RunID         string `json:"run_id"`
	CorrelationID string `json:"correlation_id"`
	TraceID       string `json:"trace_id"`
	CeID          string `json:"ce_id"`
	Topic         string `json:"topic"`
	Partition     int32  `json:"partition"`
	Offset        int64  `json:"offset"`
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("agentflux-produce", flag.ContinueOnError)
	fs.SetOutput(stderr)
	brokers := fs.String("brokers", os.Getenv("AGENTFLUX_KAFKA_BOOTSTRAP_SERVERS"), "Kafka bootstrap servers, comma-separated")
	namespace := fs.String("namespace", os.Getenv("AGENTFLUX_NAMESPACE"), "the deployment's namespace (topic prefix)")
	tenant := fs.String("tenant", "", "tenant the run belongs to")
	prompt := fs.String("prompt", "", "the prompt")
	conversation := fs.String("conversation", "", "conversation (the record key; default: a new one)")
	runID := fs.String("run-id", "", "the new run's id (default: a new one)")
	correlation := fs.String("correlation-id", "", "ce_correlationid (default: a new one)")
	traceparent := fs.String("traceparent", "", "W3C traceparent to continue (default: a new trace)")
	contentType := fs.String("content-type", events.ContentTypeProtobuf, "application/protobuf or application/json")
	source := fs.String("source", "/agentflux/sdk/go/agentflux-produce", "ce_source")
	if err := fs.Parse(args); err != nil {
		return 1
	}
	if *brokers == "" || *tenant == "" || *prompt == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: agentflux-produce --brokers B --namespace NS --tenant T --prompt P [--conversation C] [--run-id R] [--correlation-id C] [--traceparent TP] [--content-type application/protobuf|application/json]")
		return 1
	}
	if err := produce(*brokers, *namespace, *tenant, *prompt, *conversation, *runID, *correlation, *traceparent, *contentType, *source, stdout); err != nil {
		fmt.Fprintf(stderr, "error: %v\n", err)
		return 1
	}
	return 0
}

func produce(brokers, namespace, tenant, prompt, conversation, runID, correlation, traceparent, contentType, source string, stdout io.Writer) error {
	trace := events.NewTraceparent()
	if traceparent != "" {
		parent, err := events.ParseTraceparent(traceparent)
		if err != nil {
			return err
		}
		trace = parent.Child()
	}
	if runID == "" {
		runID = events.NewID()
	}
	if conversation == "" {
		conversation = events.NewID()
	}
	if correlation == "" {
		correlation = events.NewID()
	}
	request := &agentfluxv1.AgentRequested{
		RunId:          runID,
		TenantId:       tenant,
		ConversationId: conversation,
		Prompt:         prompt,
		Step:           0,
		RequestTime:    timestamppb.Now(),
	}
	opts := events.EncodeOptions{
		Namespace:     namespace,
		Source:        source,
		ID:            events.NewID(),
		ContentType:   contentType,
		CorrelationID: correlation,
		// As the gateway names the request of a run: a second copy of it starts nothing.
		IdempotencyKey: runID + ":requested",
		Traceparent:    &trace,
	}
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(strings.Split(brokers, ",")...)}, events.ProducerOptions()...)...)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rec, err := events.Publish(ctx, cl, request, opts)
	if err != nil {
		return err
	}
	return json.NewEncoder(stdout).Encode(produced{runID, correlation, trace.TraceID, opts.ID, rec.Topic, rec.Partition, rec.Offset})
}
