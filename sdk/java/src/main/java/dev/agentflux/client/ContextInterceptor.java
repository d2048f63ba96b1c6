package dev.agentflux.client;

import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ForwardingClientCall.SimpleForwardingClientCall;
import io.grpc.ForwardingClientCallListener.SimpleForwardingClientCallListener;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import java.util.function.Consumer;

/**
 * Puts the API key and a call's context (correlation id, idempotency key, trace parent) into
 * the request metadata, and hands the response headers to whoever asked for them. The
 * per-call values travel in {@link CallOptions}, so one stub serves every call.
 */
final class ContextInterceptor implements ClientInterceptor {
  static final Metadata.Key<String> AUTHORIZATION = ascii("authorization");
  static final Metadata.Key<String> CORRELATION_ID = ascii("x-correlation-id");
  static final Metadata.Key<String> REQUEST_ID = ascii("x-request-id");
  static final Metadata.Key<String> IDEMPOTENCY_KEY = ascii("idempotency-key");
  static final Metadata.Key<String> TRACEPARENT = ascii("traceparent");

  /** The context of one call; any field may be null (not sent). */
  record CallContext(
      String correlationId,
      String idempotencyKey,
      String traceparent,
      Consumer<Metadata> onHeaders) {}

  static final CallOptions.Key<CallContext> CONTEXT = CallOptions.Key.create("agentflux-context");

  private final String apiKey;

  ContextInterceptor(String apiKey) {
    this.apiKey = apiKey;
  }

  private static Metadata.Key<String> ascii(String name) {
    return Metadata.Key.of(name, Metadata.ASCII_STRING_MARSHALLER);
  }

  @Override
  public <ReqT, RespT> ClientCall<ReqT, RespT> interceptCall(
      MethodDescriptor<ReqT, RespT> method, CallOptions callOptions, Channel next) {
    CallContext context = callOptions.getOption(CONTEXT);
    return new SimpleForwardingClientCall<>(next.newCall(method, callOptions)) {
      @Override
      public void start(Listener<RespT> responseListener, Metadata headers) {
        if (apiKey != null && !apiKey.isEmpty()) {
          headers.put(AUTHORIZATION, "Bearer " + apiKey);
        }
        Listener<RespT> listener = responseListener;
        if (context != null) {
          putIfSet(headers, CORRELATION_ID, context.correlationId());
          putIfSet(headers, IDEMPOTENCY_KEY, context.idempotencyKey());
          putIfSet(headers, TRACEPARENT, context.traceparent());
          if (context.onHeaders() != null) {
            listener =
                new SimpleForwardingClientCallListener<>(responseListener) {
                  @Override
                  public void onHeaders(Metadata responseHeaders) {
                    context.onHeaders().accept(responseHeaders);
                    super.onHeaders(responseHeaders);
                  }
                };
          }
        }
        super.start(listener, headers);
      }
    };
  }

  private static void putIfSet(Metadata headers, Metadata.Key<String> key, String value) {
    if (value != null && !value.isEmpty()) {
      headers.put(key, value);
    }
  }
}
