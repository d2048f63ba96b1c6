package dev.agentflux.client;

/**
 * Optional settings of {@link AgentfluxClient#submit(String, SubmitOptions)}. Every field may
 * be left out; the ids are 1-128 letters, digits and {@code ._:-}, starting with a letter or
 * digit (the gateway refuses others with INVALID_ARGUMENT).
 *
 * <pre>{@code
 * SubmitOptions options = SubmitOptions.builder()
 *     .conversationId("support-42")
 *     .correlationId("order-7")
 *     .idempotencyKey("order-7-ask-1")
 *     .build();
 * }</pre>
 *
 * @param conversationId the conversation the run continues; a new one when null
 * @param correlationId sent as {@code x-correlation-id}; a new UUID when null
 * @param idempotencyKey sent as {@code idempotency-key}: a retried submit with the same key
 *     returns the run the first one started; a new UUID when null
 * @param traceparent a W3C {@code traceparent} the call's span continues; none when null
 */
public record SubmitOptions(
    String conversationId, String correlationId, String idempotencyKey, String traceparent) {

  /** No options: a new conversation, correlation id and idempotency key. */
  public static SubmitOptions defaults() {
    return new SubmitOptions(null, null, null, null);
  }

  public static Builder builder() {
    return new Builder();
  }

  /** Builds {@link SubmitOptions}. */
  public static final class Builder {
    private String conversationId;
    private String correlationId;
    private String idempotencyKey;
    private String traceparent;

    private Builder() {}

    public Builder conversationId(String conversationId) {
      this.conversationId = conversationId;
      return this;
    }

    public Builder correlationId(String correlationId) {
      this.correlationId = correlationId;
      return this;
    }

    public Builder idempotencyKey(String idempotencyKey) {
      this.idempotencyKey = idempotencyKey;
      return this;
    }

    public Builder traceparent(String traceparent) {
      this.traceparent = traceparent;
      return this;
    }

    public SubmitOptions build() {
      return new SubmitOptions(conversationId, correlationId, idempotencyKey, traceparent);
    }
  }
}
