package dev.agentflux.client;

import dev.agentflux.v1.Run;

/**
 * What {@link AgentfluxClient#submit} returns: the run and the call's context.
 *
 * @param run the run started (or found again, for a repeated idempotency key), in
 *     {@code RUN_STATUS_PENDING} when new
 * @param correlationId {@code x-correlation-id} as the gateway echoed it (null if it did not)
 * @param requestId {@code x-request-id} as the gateway echoed it: the call's own id (null if it
 *     did not)
 * @param idempotencyKey the {@code idempotency-key} sent: given or made by the client, so a
 *     caller can retry with it
 */
public record Submitted(Run run, String correlationId, String requestId, String idempotencyKey) {

  /** The run's id, for {@link AgentfluxClient#stream}, {@code getRun} and {@code cancelRun}. */
  public String runId() {
    return run.getRunId();
  }
}
