// Command agentflux-consume reads every contract topic of an agentflux deployment
// and prints one JSON line per record, its payload decoded by its ce_type header.
//
//	agentflux-consume --brokers HOST:PORT --namespace NS --group G
//	    [--run-id R] [--until-completed R] [--timeout SECONDS]
//
// The topics are the namespace plus the topic of each contract event (read from the
// contracts' options); the group is namespaced as the mesh's own groups are, and
// starts at the earliest record when it has no committed offset. --run-id prints
// only that run's records. --until-completed exits 0 once it printed the
// agent.completed record of that run; --timeout exits 2 when that (or, without
// --until-completed, anything) takes longer than SECONDS. Bad arguments or a broken
// connection exit 1.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/agentflux/agentflux/sdk/go/events"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/encoding/protojson"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// line is one printed record. Message is set for a decoded record, Error otherwise.
type line struct {
	Topic         string          `json:"topic"`
	Partition     int32           `json:"partition"`
	Offset        int64           `json:"offset"`
	Key           string          `json:"key"`
	CeType        string          `json:"ce_type"`
	CeID          string          `json:"ce_id"`
	CorrelationID string          `json:"correlation_id"`
	RunID         string          `json:"run_id"`
	TenantID      string          `json:"tenant_id"`
	Traceparent   string          `json:"traceparent"`
	Message       json.RawMessage `json:"message,omitempty"`
	Error         string          `json:"error,omitempty"`
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("agentflux-consume", flag.ContinueOnError)
	fs.SetOutput(stderr)
	brokers := fs.String("brokers", os.Getenv("AGENTFLUX_KAFKA_BOOTSTRAP_SERVERS"), "Kafka bootstrap servers, comma-separated")
	namespace := fs.String("namespace", os.Getenv("AGENTFLUX_NAMESPACE"), "the deployment's namespace (topic and group prefix)")
	group := fs.String("group", "", "consumer group (prefixed with the namespace)")
	runID := fs.String("run-id", "", "print only this run's records")
	until := fs.String("until-completed", "", "exit 0 after the agent.completed record of this run")
	timeout := fs.Float64("timeout", 0, "exit 2 after this many seconds (0: never)")
	if err := fs.Parse(args); err != nil {
		return 1
	}
	if *brokers == "" || *group == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: agentflux-consume --brokers B --namespace NS --group G [--run-id R] [--until-completed R] [--timeout S]")
		return 1
	}
	consume, err := events.ConsumerOptions(*namespace, *group)
	if err != nil {
		fmt.Fprintf(stderr, "error: %v\n", err)
		return 1
	}
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(strings.Split(*brokers, ",")...)}, consume...)...)
	if err != nil {
		fmt.Fprintf(stderr, "error: %v\n", err)
		return 1
	}
	defer cl.Close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(*timeout*float64(time.Second)))
		defer cancel()
	}
	completed, _ := events.TopicNamed("agent.completed")
	out := json.NewEncoder(stdout)
	for {
		fetches := cl.PollFetches(ctx)
		if fetches.IsClientClosed() {
			return 1
		}
		if ctx.Err() != nil {
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				fmt.Fprintf(stderr, "timed out after %g s%s\n", *timeout, waitingFor(*until))
				return 2
			}
			return 0 // interrupted
		}
		for _, fe := range fetches.Errors() {
			if !errors.Is(fe.Err, context.Canceled) && !errors.Is(fe.Err, context.DeadlineExceeded) {
				fmt.Fprintf(stderr, "fetch %s[%d]: %v\n", fe.Topic, fe.Partition, fe.Err)
			}
		}
		done := false
		fetches.EachRecord(func(rec *kgo.Record) {
			l, ev := describe(rec)
			// A record that could not be decoded and names no run may be the run's: shown.
			if *runID != "" && l.RunID != *runID && (ev != nil || l.RunID != "") {
				return
			}
			if err := out.Encode(l); err != nil {
				done = true // stdout is gone: nobody reads what follows
				return
			}
			if *until != "" && ev != nil && l.RunID == *until && ev.Type == completed.TypeName() && rec.Topic == completed.In(*namespace) {
				done = true
			}
		})
		if done {
			// The records printed are committed, so a later run of the group goes on
			// after them.
			commit, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := cl.CommitUncommittedOffsets(commit); err != nil {
				fmt.Fprintf(stderr, "commit: %v\n", err)
			}
			cancel()
			return 0
		}
	}
}

// describe turns a record into its printed line, with the decoded event when the
// record could be decoded.
func describe(rec *kgo.Record) (line, *events.Event) {
	h := events.Headers(rec)
	l := line{
		Topic:         rec.Topic,
		Partition:     rec.Partition,
		Offset:        rec.Offset,
		Key:           string(rec.Key),
		CeType:        h[events.HeaderType],
		CeID:          h[events.HeaderID],
		CorrelationID: h[events.HeaderCorrelationID],
		RunID:         h[events.HeaderRunID],
		TenantID:      h[events.HeaderTenantID],
		Traceparent:   h[events.HeaderTraceparent],
	}
	ev, err := events.Decode(rec)
	if err == nil {
		var msg []byte
		msg, err = protojson.Marshal(ev.Message)
		l.Message = msg
		l.RunID, l.TenantID = ev.RunID, ev.TenantID
	}
	if err != nil {
		l.Message, l.Error = nil, err.Error()
		return l, nil
	}
	return l, ev
}

func waitingFor(runID string) string {
	if runID == "" {
		return ""
	}
	return " waiting for the agent.completed record of run " + runID
}
