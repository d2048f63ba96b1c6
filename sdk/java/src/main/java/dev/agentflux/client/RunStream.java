package dev.agentflux.client;

import dev.agentflux.v1.AgentGatewayGrpc.AgentGatewayBlockingStub;
import dev.agentflux.v1.StreamRunRequest;
import dev.agentflux.v1.StreamRunResponse;
import io.grpc.Context;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.time.Duration;
import java.util.Iterator;
import java.util.NoSuchElementException;

/**
 * The events of one run, from {@link AgentfluxClient#stream(String, long)}, read as an
 * {@link Iterator} that blocks until the next event and ends after {@code finished}.
 *
 * <p>A stream that drops (UNAVAILABLE or INTERNAL, or the server ending it before {@code
 * finished}) is resumed on its own: a new StreamRun after the last sequence delivered, so
 * every event arrives exactly once and in order. Resumes that bring no new event are bounded
 * (see {@link AgentfluxClient.Builder#streamRetry}); past the bound, or on any other error, {@link #hasNext()} throws the call's {@link
 * StatusRuntimeException}.
 *
 * <p>{@link #close()} cancels the call under way (the HTTP/2 stream is reset), from any
 * thread; the iterator then ends. {@link #lastSequence()} is where a later stream would resume.
 *
 * <pre>{@code
 * try (RunStream events = client.stream(runId, 0)) {
 *   events.forEachRemaining(event -> System.out.println(event.getEventCase()));
 * }
 * }</pre>
 */
public final class RunStream implements Iterator<StreamRunResponse>, AutoCloseable {
  private final AgentGatewayBlockingStub stub;
  private final String runId;
  private final RetryPolicy retry;

  private long lastSequence;
  private Iterator<StreamRunResponse> current;
  private volatile Context.CancellableContext call;
  private volatile boolean closed;
  private StreamRunResponse next;
  private boolean finished;
  private int resumes;

  /** How often and how patiently a dropped stream is resumed. */
  record RetryPolicy(int maxResumes, Duration initialBackoff, Duration maxBackoff) {
    long backoffMillis(int failures) {
      long millis = initialBackoff.toMillis() << Math.min(failures - 1, 20);
      return Math.min(millis, maxBackoff.toMillis());
    }
  }

  RunStream(AgentGatewayBlockingStub stub, String runId, long afterSequence, RetryPolicy retry) {
    this.stub = stub;
    this.runId = runId;
    this.lastSequence = afterSequence;
    this.retry = retry;
  }

  /** The run this stream follows. */
  public String runId() {
    return runId;
  }

  /** The sequence of the last event delivered (the {@code afterSequence} given, before any). */
  public long lastSequence() {
    return lastSequence;
  }

  /** How many times the stream was reopened after a drop. */
  public int resumes() {
    return resumes;
  }

  /** True once {@code finished} was delivered. */
  public boolean isFinished() {
    return finished;
  }

  @Override
  public boolean hasNext() {
    if (next != null) {
      return true;
    }
    int failures = 0;
    while (!finished && !closed) {
      StatusRuntimeException failure;
      try {
        if (current == null) {
          open();
        }
        Iterator<StreamRunResponse> events = current;
        if (events.hasNext()) {
          StreamRunResponse event = events.next();
          // A resumed stream starts after lastSequence; anything older was delivered already.
          if (event.getSequence() > 0 && event.getSequence() <= lastSequence) {
            continue;
          }
          lastSequence = event.getSequence();
          if (event.hasFinished()) {
            finished = true;
            drop();
          }
          next = event;
          return true;
        }
        failure =
            Status.UNAVAILABLE.withDescription("the stream ended before finished").asRuntimeException();
      } catch (StatusRuntimeException e) {
        failure = e;
      }
      drop();
      if (closed) {
        break;
      }
      Status.Code code = failure.getStatus().getCode();
      if (code != Status.Code.UNAVAILABLE && code != Status.Code.INTERNAL) {
        throw failure;
      }
      failures++;
      if (failures > retry.maxResumes()) {
        throw failure;
      }
      pause(retry.backoffMillis(failures), failure);
      resumes++;
    }
    return false;
  }

  @Override
  public StreamRunResponse next() {
    if (!hasNext()) {
      throw new NoSuchElementException("the stream of run " + runId + " has ended");
    }
    StreamRunResponse event = next;
    next = null;
    return event;
  }

  /** Cancels the call under way; the stream ends. Safe to call more than once, from any thread. */
  @Override
  public void close() {
    closed = true;
    // Only the cancellation here: the reading thread, woken by it, clears its own state.
    Context.CancellableContext context = call;
    if (context != null) {
      context.cancel(null);
    }
  }

  private void open() {
    StreamRunRequest request =
        StreamRunRequest.newBuilder().setRunId(runId).setAfterSequence(lastSequence).build();
    // The call belongs to a context of its own, so cancelling it resets just this stream.
    Context.CancellableContext context = Context.current().withCancellation();
    call = context;
    Context previous = context.attach();
    try {
      current = stub.streamRun(request);
    } finally {
      context.detach(previous);
    }
    if (closed) {
      context.cancel(null);
    }
  }

  private void drop() {
    Context.CancellableContext context = call;
    call = null;
    current = null;
    if (context != null) {
      context.cancel(null);
    }
  }

  private static void pause(long millis, StatusRuntimeException failure) {
    try {
      Thread.sleep(millis);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw Status.CANCELLED
          .withDescription("interrupted while resuming the stream")
          .withCause(failure)
          .asRuntimeException();
    }
  }
}
