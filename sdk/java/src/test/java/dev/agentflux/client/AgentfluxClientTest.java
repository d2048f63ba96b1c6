package dev.agentflux.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.agentflux.v1.AgentGatewayGrpc;
import dev.agentflux.v1.Answer;
import dev.agentflux.v1.AnswerDelta;
import dev.agentflux.v1.CancelRunRequest;
import dev.agentflux.v1.CancelRunResponse;
import dev.agentflux.v1.CompletionStatus;
import dev.agentflux.v1.GetRunRequest;
import dev.agentflux.v1.GetRunResponse;
import dev.agentflux.v1.Run;
import dev.agentflux.v1.RunAccepted;
import dev.agentflux.v1.RunFinished;
import dev.agentflux.v1.RunStatus;
import dev.agentflux.v1.StreamRunRequest;
import dev.agentflux.v1.StreamRunResponse;
import dev.agentflux.v1.SubmitRequest;
import dev.agentflux.v1.SubmitResponse;
import io.grpc.ForwardingServerCall.SimpleForwardingServerCall;
import io.grpc.Metadata;
import io.grpc.Server;
import io.grpc.ServerCall;
import io.grpc.ServerCallHandler;
import io.grpc.ServerInterceptor;
import io.grpc.ServerInterceptors;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.inprocess.InProcessChannelBuilder;
import io.grpc.inprocess.InProcessServerBuilder;
import io.grpc.stub.ServerCallStreamObserver;
import io.grpc.stub.StreamObserver;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/** The client against an in-process gateway that drops streams when told to. */
class AgentfluxClientTest {
  private static final int EVENTS = 6;

  private final FakeGateway gateway = new FakeGateway();
  private final List<Metadata> received = new CopyOnWriteArrayList<>();
  private Server server;
  private AgentfluxClient client;

  @BeforeEach
  void start() throws Exception {
    String name = InProcessServerBuilder.generateName();
    ServerInterceptor echo =
        new ServerInterceptor() {
          @Override
          public <ReqT, RespT> ServerCall.Listener<ReqT> interceptCall(
              ServerCall<ReqT, RespT> call, Metadata headers, ServerCallHandler<ReqT, RespT> next) {
            received.add(headers);
            return next.startCall(
                new SimpleForwardingServerCall<>(call) {
                  @Override
                  public void sendHeaders(Metadata responseHeaders) {
                    String correlation = headers.get(ContextInterceptor.CORRELATION_ID);
                    if (correlation != null) {
                      responseHeaders.put(ContextInterceptor.CORRELATION_ID, correlation);
                    }
                    responseHeaders.put(ContextInterceptor.REQUEST_ID, "req-1");
                    super.sendHeaders(responseHeaders);
                  }
                },
                headers);
          }
        };
    server =
        InProcessServerBuilder.forName(name)
            .directExecutor()
            .addService(ServerInterceptors.intercept(gateway, echo))
            .build()
            .start();
    client =
        AgentfluxClient.builder()
            .channel(InProcessChannelBuilder.forName(name).build())
            .apiKey("key-1")
            .streamRetry(3, Duration.ofMillis(1), Duration.ofMillis(5))
            .build();
  }

  @AfterEach
  void stop() throws Exception {
    client.close();
    server.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
  }

  @Test
  void submitSendsTheKeyAndContextAndReturnsTheEchoedHeaders() {
    Submitted submitted =
        client.submit(
            "hello",
            SubmitOptions.builder()
                .correlationId("corr-1")
                .idempotencyKey("idem-1")
                .conversationId("conv-1")
                .build());
    assertEquals("run-1", submitted.runId());
    assertEquals("corr-1", submitted.correlationId());
    assertEquals("req-1", submitted.requestId());
    assertEquals("idem-1", submitted.idempotencyKey());
    Metadata sent = received.get(0);
    assertEquals("Bearer key-1", sent.get(ContextInterceptor.AUTHORIZATION));
    assertEquals("corr-1", sent.get(ContextInterceptor.CORRELATION_ID));
    assertEquals("idem-1", sent.get(ContextInterceptor.IDEMPOTENCY_KEY));
    assertEquals("conv-1", gateway.lastSubmit.getConversationId());
    assertEquals("", gateway.lastSubmit.getRequestId());
  }

  @Test
  void submitMakesAnIdempotencyKeyAndCorrelationIdWhenNoneIsGiven() {
    Submitted submitted = client.submit("hello");
    Metadata sent = received.get(0);
    assertEquals(submitted.idempotencyKey(), sent.get(ContextInterceptor.IDEMPOTENCY_KEY));
    assertTrue(submitted.idempotencyKey().matches("[A-Za-z0-9][A-Za-z0-9._:-]*"));
    assertEquals(sent.get(ContextInterceptor.CORRELATION_ID), submitted.correlationId());
  }

  @Test
  void aDroppedStreamResumesAfterTheLastSequenceWithNoGapOrDuplicate() {
    gateway.dropAfter.set(2);
    List<Long> sequences = new ArrayList<>();
    try (RunStream events = client.stream("run-1", 0)) {
      events.forEachRemaining(e -> sequences.add(e.getSequence()));
      assertEquals(1, events.resumes());
      assertTrue(events.isFinished());
    }
    assertEquals(List.of(1L, 2L, 3L, 4L, 5L, 6L), sequences);
    assertEquals(List.of(0L, 2L), gateway.streamAfter);
  }

  @Test
  void resumingGivesUpAfterTheBound() {
    gateway.dropAfter.set(0);
    gateway.alwaysDrop = true;
    RunStream events = client.stream("run-1", 0);
    StatusRuntimeException e = assertThrows(StatusRuntimeException.class, events::hasNext);
    assertEquals(Status.Code.UNAVAILABLE, e.getStatus().getCode());
    assertEquals(1 + 3, gateway.streamAfter.size());
  }

  @Test
  void otherErrorsAreNotRetried() {
    RunStream events = client.stream("missing", 0);
    StatusRuntimeException e = assertThrows(StatusRuntimeException.class, events::hasNext);
    assertEquals(Status.Code.NOT_FOUND, e.getStatus().getCode());
    assertEquals(1, gateway.streamAfter.size());
  }

  @Test
  void closeCancelsTheCallOnTheServer() throws Exception {
    gateway.holdAfter.set(2);
    RunStream events = client.stream("run-1", 0);
    assertEquals(1, events.next().getSequence());
    assertEquals(2, events.next().getSequence());
    events.close();
    assertTrue(gateway.cancelled.await(5, TimeUnit.SECONDS), "the server saw the cancellation");
    assertFalse(events.hasNext());
    assertEquals(2, events.lastSequence());
  }

  @Test
  void getAndCancel() {
    assertEquals(RunStatus.RUN_STATUS_COMPLETED, client.getRun("run-1").getStatus());
    assertEquals(RunStatus.RUN_STATUS_CANCELLING, client.cancelRun("run-1", "why").getStatus());
    assertEquals("why", gateway.lastCancel.getReason());
  }

  @Test
  void unaryErrorsAreTheGatewayStatus() {
    StatusRuntimeException e =
        assertThrows(StatusRuntimeException.class, () -> client.getRun("missing"));
    assertEquals(Status.Code.NOT_FOUND, e.getStatus().getCode());
  }

  @Test
  void exampleParsesItsCommandLine() {
    Example.Options options =
        Example.Options.parse(
            new String[] {"--target", "x:1", "run", "--prompt", "p", "--disconnect-after=2"},
            Map.of());
    assertEquals(2, options.disconnectAfter);
    assertEquals("x:1", options.target);
    assertThrows(
        IllegalArgumentException.class,
        () -> Example.Options.parse(new String[] {"cancel", "--prompt", "p"}, Map.of()));
    assertThrows(
        IllegalArgumentException.class,
        () ->
            Example.Options.parse(
                new String[] {"cancel", "--prompt", "p", "--disconnect-after", "1"},
                Map.of("AGENTFLUX_TARGET", "x:1")));
  }

  @Test
  void jsonEscapesWhatItMust() {
    assertEquals(
        "{\"a\":\"q\\\"b\\\\n\\nx\\u00e9\\u0001\",\"n\":3}",
        Json.object("a", "q\"b\\n\nx\u00e9\u0001", "n", 3L));
    assertEquals("{\"a\":\"\"}", Json.object("a", null));
  }

  /** Runs "run-1" with EVENTS events; drops or holds streams when the test says so. */
  static final class FakeGateway extends AgentGatewayGrpc.AgentGatewayImplBase {
    final AtomicInteger dropAfter = new AtomicInteger(-1);
    final AtomicInteger holdAfter = new AtomicInteger(-1);
    volatile boolean alwaysDrop;
    final List<Long> streamAfter = new CopyOnWriteArrayList<>();
    final CountDownLatch cancelled = new CountDownLatch(1);
    volatile SubmitRequest lastSubmit;
    volatile CancelRunRequest lastCancel;

    private static Run run(RunStatus status) {
      return Run.newBuilder().setRunId("run-1").setStatus(status).build();
    }

    @Override
    public void submit(SubmitRequest request, StreamObserver<SubmitResponse> responses) {
      lastSubmit = request;
      responses.onNext(SubmitResponse.newBuilder().setRun(run(RunStatus.RUN_STATUS_PENDING)).build());
      responses.onCompleted();
    }

    @Override
    public void getRun(GetRunRequest request, StreamObserver<GetRunResponse> responses) {
      if (!request.getRunId().equals("run-1")) {
        responses.onError(Status.NOT_FOUND.withDescription("no such run").asRuntimeException());
        return;
      }
      responses.onNext(GetRunResponse.newBuilder().setRun(run(RunStatus.RUN_STATUS_COMPLETED)).build());
      responses.onCompleted();
    }

    @Override
    public void cancelRun(CancelRunRequest request, StreamObserver<CancelRunResponse> responses) {
      lastCancel = request;
      responses.onNext(
          CancelRunResponse.newBuilder().setRun(run(RunStatus.RUN_STATUS_CANCELLING)).build());
      responses.onCompleted();
    }

    @Override
    public void streamRun(StreamRunRequest request, StreamObserver<StreamRunResponse> responses) {
      streamAfter.add(request.getAfterSequence());
      if (!request.getRunId().equals("run-1")) {
        responses.onError(Status.NOT_FOUND.withDescription("no such run").asRuntimeException());
        return;
      }
      ServerCallStreamObserver<StreamRunResponse> call =
          (ServerCallStreamObserver<StreamRunResponse>) responses;
      call.setOnCancelHandler(cancelled::countDown);
      int sent = 0;
      for (long seq = request.getAfterSequence() + 1; seq <= EVENTS; seq++) {
        if (sent == holdAfter.get()) {
          return; // left open: only the client's cancellation ends it
        }
        if (sent == dropAfter.get() && (alwaysDrop || streamAfter.size() == 1)) {
          responses.onError(Status.UNAVAILABLE.withDescription("dropped").asRuntimeException());
          return;
        }
        responses.onNext(event(seq));
        sent++;
      }
      responses.onCompleted();
    }

    private static StreamRunResponse event(long seq) {
      StreamRunResponse.Builder event = StreamRunResponse.newBuilder().setSequence(seq);
      if (seq == 1) {
        event.setAccepted(RunAccepted.newBuilder().setRun(run(RunStatus.RUN_STATUS_PENDING)));
      } else if (seq == EVENTS) {
        event.setFinished(
            RunFinished.newBuilder()
                .setStatus(CompletionStatus.COMPLETION_STATUS_COMPLETED)
                .setAnswer(Answer.newBuilder().setText("50")));
      } else {
        event.setAnswerDelta(AnswerDelta.newBuilder().setText("x"));
      }
      return event.build();
    }
  }
}
