package dev.agentflux.client;

import dev.agentflux.client.ContextInterceptor.CallContext;
import dev.agentflux.v1.AgentGatewayGrpc;
import dev.agentflux.v1.AgentGatewayGrpc.AgentGatewayBlockingStub;
import dev.agentflux.v1.CancelRunRequest;
import dev.agentflux.v1.GetRunRequest;
import dev.agentflux.v1.Run;
import dev.agentflux.v1.SubmitRequest;
import dev.agentflux.v1.SubmitResponse;
import io.grpc.Channel;
import io.grpc.ChannelCredentials;
import io.grpc.ClientInterceptors;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.StatusRuntimeException;
import io.grpc.TlsChannelCredentials;
import java.io.File;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.time.Duration;
import java.util.Objects;
import java.util.UUID;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;

/**
 * A client of the agentflux gateway ({@code agentflux.v1.AgentGateway}): one channel that
 * presents an API key on every call.
 *
 * <pre>{@code
 * try (AgentfluxClient client = AgentfluxClient.builder()
 *     .target("127.0.0.1:50051")
 *     .apiKey(System.getenv("AGENTFLUX_API_KEY"))
 *     .build()) {
 *   Submitted submitted = client.submit("what is 6*7 then add 8");
 *   try (RunStream events = client.stream(submitted.runId(), 0)) {
 *     events.forEachRemaining(event -> System.out.println(event.getEventCase()));
 *   }
 *   Run run = client.getRun(submitted.runId());
 * }
 * }</pre>
 *
 * <p>Errors are the gateway's gRPC status, thrown as {@link StatusRuntimeException} (for
 * example UNAUTHENTICATED for a missing or unknown key, NOT_FOUND for a run of another tenant).
 * The client is thread-safe; close it to release the connection.
 */
public final class AgentfluxClient implements AutoCloseable {
  private static final String USER_AGENT = "agentflux-client-java";

  private final ManagedChannel channel;
  private final AgentGatewayBlockingStub stub;
  private final Duration callTimeout;
  private final RunStream.RetryPolicy streamRetry;

  private AgentfluxClient(Builder builder) {
    this.channel = builder.channel != null ? builder.channel : dial(builder);
    Channel intercepted =
        ClientInterceptors.intercept(channel, new ContextInterceptor(builder.apiKey));
    this.stub = AgentGatewayGrpc.newBlockingStub(intercepted);
    this.callTimeout = builder.callTimeout;
    this.streamRetry =
        new RunStream.RetryPolicy(
            builder.streamResumes, builder.streamInitialBackoff, builder.streamMaxBackoff);
  }

  private static ManagedChannel dial(Builder builder) {
    if (builder.target == null || builder.target.isBlank()) {
      throw new IllegalArgumentException("a target (host:port of the gateway) is required");
    }
    ChannelCredentials credentials =
        builder.credentials != null ? builder.credentials : InsecureChannelCredentials.create();
    return Grpc.newChannelBuilder(builder.target, credentials).userAgent(USER_AGENT).build();
  }

  /** A client of the gateway at {@code target} (host:port, plaintext) presenting {@code apiKey}. */
  public static AgentfluxClient connect(String target, String apiKey) {
    return builder().target(target).apiKey(apiKey).build();
  }

  public static Builder builder() {
    return new Builder();
  }

  /** Starts a run of {@code prompt}, with a new conversation, correlation id and key. */
  public Submitted submit(String prompt) {
    return submit(prompt, SubmitOptions.defaults());
  }

  /**
   * Starts a run of {@code prompt} and returns at once with it (RUN_STATUS_PENDING), plus the
   * correlation and request ids the gateway echoed. The correlation id and idempotency key are
   * made here when the options leave them out, so the caller always knows them: submitting
   * again with the same idempotency key returns the same run.
   */
  public Submitted submit(String prompt, SubmitOptions options) {
    Objects.requireNonNull(prompt, "prompt");
    SubmitOptions opts = options != null ? options : SubmitOptions.defaults();
    String correlationId = orNewId(opts.correlationId());
    String idempotencyKey = orNewId(opts.idempotencyKey());
    SubmitRequest.Builder request = SubmitRequest.newBuilder().setPrompt(prompt);
    if (opts.conversationId() != null) {
      request.setConversationId(opts.conversationId());
    }
    AtomicReference<Metadata> headers = new AtomicReference<>();
    CallContext context =
        new CallContext(correlationId, idempotencyKey, opts.traceparent(), headers::set);
    SubmitResponse response = unary().withOption(ContextInterceptor.CONTEXT, context).submit(
        request.build());
    Metadata echoed = headers.get();
    return new Submitted(
        response.getRun(),
        echoed == null ? null : echoed.get(ContextInterceptor.CORRELATION_ID),
        echoed == null ? null : echoed.get(ContextInterceptor.REQUEST_ID),
        idempotencyKey);
  }

  /** The events of a run from its start; see {@link #stream(String, long)}. */
  public RunStream stream(String runId) {
    return stream(runId, 0);
  }

  /**
   * The events of a run after sequence {@code afterSequence} (0: from the start), until {@code
   * finished}. The stream resumes by itself after a drop; close it to stop early.
   */
  public RunStream stream(String runId, long afterSequence) {
    Objects.requireNonNull(runId, "runId");
    if (afterSequence < 0) {
      throw new IllegalArgumentException("afterSequence must be 0 or more");
    }
    // No deadline: a run takes as long as it takes, and a drop is resumed anyway.
    return new RunStream(stub, runId, afterSequence, streamRetry);
  }

  /** The current state of a run. */
  public Run getRun(String runId) {
    return unary().getRun(GetRunRequest.newBuilder().setRunId(runId).build()).getRun();
  }

  /** Cancels a run; see {@link #cancelRun(String, String)}. */
  public Run cancelRun(String runId) {
    return cancelRun(runId, "");
  }

  /**
   * Cancels a run and returns it once none of its tools runs any more (CANCELLING, or already
   * CANCELLED; a finished run unchanged). {@code reason} is kept as the run's error message.
   */
  public Run cancelRun(String runId, String reason) {
    CancelRunRequest request =
        CancelRunRequest.newBuilder().setRunId(runId).setReason(reason == null ? "" : reason).build();
    return unary().cancelRun(request).getRun();
  }

  /**
   * The generated stub on this client's channel, presenting its API key: for the calls this
   * class does not wrap (ListRuns, SearchResponses, ApproveToolCall, RejectToolCall).
   */
  public AgentGatewayBlockingStub stub() {
    return stub;
  }

  /** Closes the channel, waiting briefly for calls under way. */
  @Override
  public void close() {
    channel.shutdown();
    try {
      if (!channel.awaitTermination(5, TimeUnit.SECONDS)) {
        channel.shutdownNow();
      }
    } catch (InterruptedException e) {
      channel.shutdownNow();
      Thread.currentThread().interrupt();
    }
  }

  private AgentGatewayBlockingStub unary() {
    return stub.withDeadlineAfter(callTimeout.toMillis(), TimeUnit.MILLISECONDS);
  }

  private static String orNewId(String id) {
    return id == null || id.isEmpty() ? UUID.randomUUID().toString() : id;
  }

  /** Builds an {@link AgentfluxClient}: a target (or a channel of your own) is required. */
  public static final class Builder {
    private String target;
    private String apiKey;
    private ChannelCredentials credentials;
    private ManagedChannel channel;
    private Duration callTimeout = Duration.ofSeconds(60);
    private int streamResumes = 5;
    private Duration streamInitialBackoff = Duration.ofMillis(250);
    private Duration streamMaxBackoff = Duration.ofSeconds(5);

    private Builder() {}

    /** The gateway's address, host:port (or any gRPC target, such as dns:///host:port). */
    public Builder target(String target) {
      this.target = target;
      return this;
    }

    /** The API key, sent as {@code authorization: Bearer <key>}; none when null or empty. */
    public Builder apiKey(String apiKey) {
      this.apiKey = apiKey;
      return this;
    }

    /** TLS, trusting the JVM's default certificate authorities. */
    public Builder tls() {
      this.credentials = TlsChannelCredentials.create();
      return this;
    }

    /** TLS, trusting the certificate authorities of a PEM file (a private CA, say). */
    public Builder tls(File trustedCertificatesPem) {
      try {
        this.credentials =
            TlsChannelCredentials.newBuilder().trustManager(trustedCertificatesPem).build();
      } catch (IOException e) {
        throw new UncheckedIOException("cannot read " + trustedCertificatesPem, e);
      }
      return this;
    }

    /**
     * Credentials of your own, such as TLS with a client certificate: {@code
     * TlsChannelCredentials.newBuilder().trustManager(ca).keyManager(cert, key).build()}.
     */
    public Builder credentials(ChannelCredentials credentials) {
      this.credentials = credentials;
      return this;
    }

    /**
     * A channel of your own instead of dialing {@link #target}; the client adds its API key
     * and context headers to its calls, and shuts it down on close.
     */
    public Builder channel(ManagedChannel channel) {
      this.channel = channel;
      return this;
    }

    /** Deadline of Submit, GetRun and CancelRun (60 s by default; streams have none). */
    public Builder callTimeout(Duration callTimeout) {
      this.callTimeout = Objects.requireNonNull(callTimeout);
      return this;
    }

    /**
     * How a dropped stream is resumed: at most {@code maxResumes} times in a row without a
     * new event in between (5 by default; 0 never resumes), waiting {@code initialBackoff}
     * (250 ms) before the first, doubling up to {@code maxBackoff} (5 s).
     */
    public Builder streamRetry(int maxResumes, Duration initialBackoff, Duration maxBackoff) {
      if (maxResumes < 0) {
        throw new IllegalArgumentException("maxResumes must be 0 or more");
      }
      this.streamResumes = maxResumes;
      this.streamInitialBackoff = Objects.requireNonNull(initialBackoff);
      this.streamMaxBackoff = Objects.requireNonNull(maxBackoff);
      return this;
    }

    public AgentfluxClient build() {
      return new AgentfluxClient(this);
    }
  }
}
