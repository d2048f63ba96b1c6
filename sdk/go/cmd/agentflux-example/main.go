// Command agentflux-example runs a prompt through the gateway with the agentflux Go
// client and prints what happens as JSON lines: the submission, every event of the
// run's stream (across a deliberate disconnect with --disconnect-after), a
// cancellation (the cancel command) and the run as GetRun returns it.
//
//	agentflux-example --target HOST:PORT --api-key KEY run --prompt TEXT
//	    [--conversation ID] [--correlation-id ID] [--idempotency-key KEY] [--disconnect-after N]
//	agentflux-example --target HOST:PORT --api-key KEY cancel --prompt TEXT [--correlation-id ID]
//
// --target and --api-key fall back to AGENTFLUX_TARGET and AGENTFLUX_API_KEY. On a
// gRPC error it prints "error: <CODE>: <message>" on stderr and exits 1.
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
	"syscall"
	"time"

	"github.com/agentflux/agentflux/sdk/go/agentflux"
	"google.golang.org/grpc/status"
)

const usage = `usage:
  agentflux-example [--target HOST:PORT] [--api-key KEY] run --prompt TEXT [--conversation ID] [--correlation-id ID] [--idempotency-key KEY] [--disconnect-after N]
  agentflux-example [--target HOST:PORT] [--api-key KEY] cancel --prompt TEXT [--correlation-id ID]
(--target and --api-key default to $AGENTFLUX_TARGET and $AGENTFLUX_API_KEY)
`

// callTimeout bounds every call, so a stuck gateway ends the program with an error.
const callTimeout = 5 * time.Minute

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	global := flag.NewFlagSet("agentflux-example", flag.ContinueOnError)
	global.SetOutput(stderr)
	global.Usage = func() { fmt.Fprint(stderr, usage) }
	target := global.String("target", os.Getenv("AGENTFLUX_TARGET"), "gateway host:port")
	apiKey := global.String("api-key", os.Getenv("AGENTFLUX_API_KEY"), "API key of the tenant")
	if err := global.Parse(args); err != nil {
		return 2
	}
	rest := global.Args()
	if len(rest) == 0 || (rest[0] != "run" && rest[0] != "cancel") {
		fmt.Fprint(stderr, usage)
		return 2
	}
	command := rest[0]
	sub := flag.NewFlagSet(command, flag.ContinueOnError)
	sub.SetOutput(stderr)
	sub.Usage = func() { fmt.Fprint(stderr, usage) }
	prompt := sub.String("prompt", "", "the prompt")
	correlation := sub.String("correlation-id", "", "x-correlation-id (default: a new one)")
	var conversation, idempotency *string
	var disconnectAfter *int
	if command == "run" {
		conversation = sub.String("conversation", "", "conversation to continue")
		idempotency = sub.String("idempotency-key", "", "idempotency-key (default: a new one)")
		disconnectAfter = sub.Int("disconnect-after", 0, "drop the stream after N events, then resume")
	}
	if err := sub.Parse(rest[1:]); err != nil {
		return 2
	}
	if *target == "" || *prompt == "" || sub.NArg() > 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	var opts []agentflux.Option
	if *apiKey != "" {
		opts = append(opts, agentflux.WithAPIKey(*apiKey))
	}
	client, err := agentflux.Dial(*target, opts...)
	if err != nil {
		fmt.Fprintf(stderr, "error: %v\n", err)
		return 1
	}
	defer client.Close()
	out := json.NewEncoder(stdout)
	p := &program{client: client, out: out}
	submit := agentflux.SubmitOptions{CorrelationID: *correlation}
	if command == "run" {
		submit.ConversationID, submit.IdempotencyKey = *conversation, *idempotency
		err = p.run(ctx, *prompt, submit, *disconnectAfter)
	} else {
		err = p.cancel(ctx, *prompt, submit)
	}
	if err != nil {
		if st, ok := status.FromError(err); ok {
			fmt.Fprintf(stderr, "error: %s: %s\n", agentflux.CodeName(err), st.Message())
		} else {
			fmt.Fprintf(stderr, "error: %v\n", err)
		}
		return 1
	}
	return 0
}

type program struct {
	client *agentflux.Client
	out    *json.Encoder
}

type submittedLine struct {
	Op             string `json:"op"`
	RunID          string `json:"run_id"`
	CorrelationID  string `json:"correlation_id"`
	RequestID      string `json:"request_id"`
	IdempotencyKey string `json:"idempotency_key"`
}

type eventLine struct {
	Op       string `json:"op"`
	Sequence int64  `json:"sequence"`
	Kind     string `json:"kind"`
}

type disconnectedLine struct {
	Op            string `json:"op"`
	AfterSequence int64  `json:"after_sequence"`
}

type cancelledLine struct {
	Op     string `json:"op"`
	Status string `json:"status"`
}

type runLine struct {
	Op     string `json:"op"`
	RunID  string `json:"run_id"`
	Status string `json:"status"`
	Answer string `json:"answer"`
	Error  string `json:"error"`
}

func (p *program) print(v any) {
	// A closed stdout leaves nothing to report to.
	_ = p.out.Encode(v)
}

func (p *program) submit(ctx context.Context, prompt string, opts agentflux.SubmitOptions) (string, error) {
	sub, err := p.client.Submit(ctx, prompt, opts)
	if err != nil {
		return "", err
	}
	p.print(submittedLine{"submitted", sub.Run.GetRunId(), sub.CorrelationID, sub.RequestID, sub.IdempotencyKey})
	return sub.Run.GetRunId(), nil
}

// follow prints the stream's events until `finished` (it returns true) or until stop
// says so after an event (false); the stream's LastSequence is where to resume.
func (p *program) follow(s *agentflux.RunStream, stop func(kind string, seen int) bool) (bool, error) {
	seen := 0
	for {
		ev, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		seen++
		kind := agentflux.EventKind(ev)
		p.print(eventLine{"event", ev.GetSequence(), kind})
		if kind == "finished" {
			return true, nil
		}
		if stop != nil && stop(kind, seen) {
			return false, nil
		}
	}
}

func (p *program) run(ctx context.Context, prompt string, opts agentflux.SubmitOptions, disconnectAfter int) error {
	runID, err := p.submit(ctx, prompt, opts)
	if err != nil {
		return err
	}
	first := p.client.Stream(ctx, runID, 0)
	var stop func(string, int) bool
	if disconnectAfter > 0 {
		stop = func(_ string, seen int) bool { return seen >= disconnectAfter }
	}
	finished, err := p.follow(first, stop)
	first.Close()
	if err != nil {
		return err
	}
	if !finished {
		p.print(disconnectedLine{"disconnected", first.LastSequence()})
		if _, err := p.follow(p.client.Stream(ctx, runID, first.LastSequence()), nil); err != nil {
			return err
		}
	}
	return p.report(ctx, runID)
}

func (p *program) cancel(ctx context.Context, prompt string, opts agentflux.SubmitOptions) error {
	runID, err := p.submit(ctx, prompt, opts)
	if err != nil {
		return err
	}
	first := p.client.Stream(ctx, runID, 0)
	finished, err := p.follow(first, func(kind string, _ int) bool { return kind == "tool_started" })
	first.Close()
	if err != nil {
		return err
	}
	if !finished {
		run, err := p.client.CancelRun(ctx, runID, "cancelled by agentflux-example")
		if err != nil {
			return err
		}
		p.print(cancelledLine{"cancelled", run.GetStatus().String()})
		if _, err := p.follow(p.client.Stream(ctx, runID, first.LastSequence()), nil); err != nil {
			return err
		}
	}
	return p.report(ctx, runID)
}

func (p *program) report(ctx context.Context, runID string) error {
	run, err := p.client.GetRun(ctx, runID)
	if err != nil {
		return err
	}
	p.print(runLine{"run", run.GetRunId(), run.GetStatus().String(), run.GetAnswer().GetText(), run.GetErrorMessage()})
	return nil
}
