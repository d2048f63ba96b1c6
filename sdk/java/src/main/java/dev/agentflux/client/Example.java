package dev.agentflux.client;

import dev.agentflux.v1.Run;
import dev.agentflux.v1.StreamRunResponse;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.io.PrintStream;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Objects;
import java.util.Set;

/**
 * The example program: submits a prompt, follows the run's events (dropping the stream and
 * resuming it, or cancelling the run while a tool runs) and prints one JSON object per line.
 *
 * <pre>
 * java -jar agentflux-example.jar --target HOST:PORT --api-key KEY run --prompt TEXT
 *     [--conversation ID] [--correlation-id ID] [--idempotency-key KEY] [--disconnect-after N]
 * java -jar agentflux-example.jar --target HOST:PORT --api-key KEY cancel --prompt TEXT
 *     [--correlation-id ID]
 * </pre>
 *
 * {@code --target} and {@code --api-key} default to $AGENTFLUX_TARGET and $AGENTFLUX_API_KEY.
 * Exit status: 0 on success, 1 on a gRPC error (told on stderr as {@code error: CODE: message}),
 * 2 on a command line it cannot use.
 */
public final class Example {
  static final String USAGE =
      String.join(
          "\n",
          "usage: agentflux-example [--target HOST:PORT] [--api-key KEY] run --prompt TEXT",
          "           [--conversation ID] [--correlation-id ID] [--idempotency-key KEY]"
              + " [--disconnect-after N]",
          "       agentflux-example [--target HOST:PORT] [--api-key KEY] cancel --prompt TEXT"
              + " [--correlation-id ID]",
          "--target and --api-key default to $AGENTFLUX_TARGET and $AGENTFLUX_API_KEY.");

  private static final Set<String> GLOBAL = Set.of("target", "api-key");
  private static final Map<String, Set<String>> COMMANDS =
      Map.of(
          "run",
          Set.of("prompt", "conversation", "correlation-id", "idempotency-key", "disconnect-after"),
          "cancel",
          Set.of("prompt", "correlation-id"));

  private final AgentfluxClient client;
  private final PrintStream out;

  private Example(AgentfluxClient client, PrintStream out) {
    this.client = client;
    this.out = out;
  }

  public static void main(String[] args) {
    System.exit(run(args, System.getenv(), System.out, System.err));
  }

  /** Runs the program; returns its exit status. */
  static int run(String[] args, Map<String, String> env, PrintStream out, PrintStream err) {
    Options options;
    try {
      options = Options.parse(args, env);
    } catch (IllegalArgumentException e) {
      err.println("error: " + e.getMessage());
      err.println(USAGE);
      return 2;
    }
    if (options == null) {
      out.println(USAGE);
      return 0;
    }
    try (AgentfluxClient client =
        AgentfluxClient.builder().target(options.target).apiKey(options.apiKey).build()) {
      Example example = new Example(client, out);
      if (options.command.equals("run")) {
        example.run(options);
      } else {
        example.cancel(options);
      }
      return 0;
    } catch (StatusRuntimeException e) {
      Status status = e.getStatus();
      err.println(
          "error: " + status.getCode().name() + ": " + Objects.toString(status.getDescription(), ""));
      return 1;
    } finally {
      out.flush();
    }
  }

  /** Submit, stream (dropping the stream after N events and resuming it), then GetRun. */
  private void run(Options options) {
    Submitted submitted = submit(options);
    String runId = submitted.runId();
    long last;
    boolean finished;
    try (RunStream events = client.stream(runId, 0)) {
      int seen = 0;
      // The count is checked first: hasNext() would already wait for the next event.
      while (!(options.disconnectAfter > 0 && seen >= options.disconnectAfter) && events.hasNext()) {
        print(events.next());
        seen++;
      }
      last = events.lastSequence();
      finished = events.isFinished();
    }
    // Closing the stream above cancelled its call: the client's side of the HTTP/2 stream
    // is gone, and a new call picks up after the last event seen.
    if (!finished) {
      emit(Json.object("op", "disconnected", "after_sequence", last));
      follow(runId, last);
    }
    printRun(client.getRun(runId));
  }

  /** Submit, wait for a tool to start, CancelRun, stream on to finished, then GetRun. */
  private void cancel(Options options) {
    Submitted submitted = submit(options);
    String runId = submitted.runId();
    long last;
    boolean finished;
    try (RunStream events = client.stream(runId, 0)) {
      while (events.hasNext()) {
        StreamRunResponse event = events.next();
        print(event);
        if (event.hasToolStarted()) {
          break;
        }
      }
      last = events.lastSequence();
      finished = events.isFinished();
    }
    Run cancelled = client.cancelRun(runId, "cancelled by the agentflux example");
    emit(Json.object("op", "cancelled", "status", cancelled.getStatus().name()));
    if (!finished) {
      follow(runId, last);
    }
    printRun(client.getRun(runId));
  }

  /** Submit; the client makes the correlation id and idempotency key when not given. */
  private Submitted submit(Options options) {
    SubmitOptions submitOptions =
        SubmitOptions.builder()
            .conversationId(options.conversation)
            .correlationId(options.correlationId)
            .idempotencyKey(options.idempotencyKey)
            .build();
    Submitted submitted = client.submit(options.prompt, submitOptions);
    emit(
        Json.object(
            "op", "submitted",
            "run_id", submitted.runId(),
            "correlation_id", submitted.correlationId(),
            "request_id", submitted.requestId(),
            "idempotency_key", submitted.idempotencyKey()));
    return submitted;
  }

  /** Prints every event after {@code afterSequence} up to finished. */
  private void follow(String runId, long afterSequence) {
    try (RunStream events = client.stream(runId, afterSequence)) {
      events.forEachRemaining(this::print);
    }
  }

  private void print(StreamRunResponse event) {
    emit(Json.object("op", "event", "sequence", event.getSequence(), "kind", kind(event)));
  }

  private void printRun(Run run) {
    emit(
        Json.object(
            "op", "run",
            "run_id", run.getRunId(),
            "status", run.getStatus().name(),
            "answer", run.getAnswer().getText(),
            "error", run.getErrorMessage()));
  }

  static String kind(StreamRunResponse event) {
    StreamRunResponse.EventCase which = event.getEventCase();
    return which == StreamRunResponse.EventCase.EVENT_NOT_SET
        ? "unknown"
        : which.name().toLowerCase(Locale.ROOT);
  }

  private void emit(String line) {
    out.println(line);
    out.flush();
  }

  /** The parsed command line. */
  static final class Options {
    String command;
    String target;
    String apiKey;
    String prompt;
    String conversation;
    String correlationId;
    String idempotencyKey;
    int disconnectAfter;

    /** Parses the arguments; null when help was asked for. */
    static Options parse(String[] args, Map<String, String> env) {
      Map<String, String> flags = new HashMap<>();
      List<String> positional = new ArrayList<>();
      for (int i = 0; i < args.length; i++) {
        String arg = args[i];
        if (arg.equals("-h") || arg.equals("--help")) {
          return null;
        }
        if (!arg.startsWith("--")) {
          positional.add(arg);
          continue;
        }
        String name = arg.substring(2);
        String value;
        int eq = name.indexOf('=');
        if (eq >= 0) {
          value = name.substring(eq + 1);
          name = name.substring(0, eq);
        } else if (i + 1 < args.length) {
          value = args[++i];
        } else {
          throw new IllegalArgumentException("--" + name + " needs a value");
        }
        flags.put(name, value);
      }
      if (positional.size() != 1 || !COMMANDS.containsKey(positional.get(0))) {
        throw new IllegalArgumentException("name one command: run or cancel");
      }
      Options o = new Options();
      o.command = positional.get(0);
      Set<String> allowed = COMMANDS.get(o.command);
      for (String name : flags.keySet()) {
        if (!GLOBAL.contains(name) && !allowed.contains(name)) {
          throw new IllegalArgumentException("unknown flag for " + o.command + ": --" + name);
        }
      }
      o.target = flags.getOrDefault("target", env.get("AGENTFLUX_TARGET"));
      o.apiKey = flags.getOrDefault("api-key", env.get("AGENTFLUX_API_KEY"));
      o.prompt = flags.get("prompt");
      o.conversation = flags.get("conversation");
      o.correlationId = flags.get("correlation-id");
      o.idempotencyKey = flags.get("idempotency-key");
      if (o.target == null || o.target.isBlank()) {
        throw new IllegalArgumentException("--target (or $AGENTFLUX_TARGET) is required");
      }
      if (o.prompt == null || o.prompt.isBlank()) {
        throw new IllegalArgumentException("--prompt is required");
      }
      String after = flags.get("disconnect-after");
      if (after != null) {
        try {
          o.disconnectAfter = Integer.parseInt(after);
        } catch (NumberFormatException e) {
          o.disconnectAfter = -1;
        }
        if (o.disconnectAfter < 1) {
          throw new IllegalArgumentException("--disconnect-after takes a number of events, 1 or more");
        }
      }
      return o;
    }
  }
}
