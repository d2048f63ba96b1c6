package dev.agentflux.v1;

import static io.grpc.MethodDescriptor.generateFullMethodName;

/**
 * <pre>
 * The public entry point of agentflux. Callers submit prompts, follow a run's
 * progress, look runs up, cancel them and search finished answers. The tenant is
 * taken from the caller's credentials; a run of another tenant is NOT_FOUND.
 * Credentials: every call presents an API key, as `authorization: Bearer &lt;key&gt;` or
 * `x-api-key: &lt;key&gt;`; the key names the caller's tenant. A missing, unknown or revoked
 * key is UNAUTHENTICATED. A run, stream, answer or search result of another tenant is
 * NOT_FOUND, never PERMISSION_DENIED, so no caller learns that it exists. With TLS on,
 * the port speaks TLS only (and, with a client CA, requires a client certificate).
 * Limits: over its tenant's sliding-window rate limit, or with too many runs in
 * flight, a call is RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo` detail saying when
 * to retry; out of token budget, RESOURCE_EXHAUSTED with a `google.rpc.QuotaFailure`
 * detail naming the budget. A request larger than the gateway reads is
 * RESOURCE_EXHAUSTED. Invalid fields are INVALID_ARGUMENT with a
 * `google.rpc.BadRequest` detail naming each field at fault. A `request_id` reused for
 * a different request is ALREADY_EXISTS, naming the run it started.
 * Metadata the gateway reads on every call (all optional):
 *   x-correlation-id  ties everything one request causes together; created when
 *                     absent. Echoed in the initial response metadata.
 *   x-request-id      this call's id (the causation id of what it emits); created
 *                     when absent. Echoed in the initial response metadata.
 *   idempotency-key   carried to every event and task the call causes.
 *   x-tenant-id       the tenant when credentials are off (a local deployment);
 *                     with an API key, ignored: the key alone names the tenant.
 *   traceparent, tracestate
 *                     W3C trace context; the call's span continues that trace.
 * A malformed value is refused with INVALID_ARGUMENT naming the key. Every key and
 * its format: docs/wire-protocol.md.
 * Reading what you wrote: as soon as `Submit` returns, `GetRun`, `StreamRun` and
 * `ListRuns` find the run (never NOT_FOUND); once a stream delivered `finished`,
 * `GetRun` returns the finished run.
 * One vocabulary for how a run ends: `RunFinished.status` (a `CompletionStatus`)
 * and `Run.status` (a `RunStatus`) map one to one on the terminal states:
 * COMPLETION_STATUS_COMPLETED = RUN_STATUS_COMPLETED, COMPLETION_STATUS_FAILED =
 * RUN_STATUS_FAILED, COMPLETION_STATUS_CANCELLED = RUN_STATUS_CANCELLED.
 * The answer appears in three places, equal once the run finished: the joined
 * `AnswerDelta` texts of the stream, `RunFinished.answer.text`, and
 * `Run.answer.text` from `GetRun`.
 * </pre>
 */
@io.grpc.stub.annotations.GrpcGenerated
public final class AgentGatewayGrpc {

  private AgentGatewayGrpc() {}

  public static final java.lang.String SERVICE_NAME = "agentflux.v1.AgentGateway";

  // Static method descriptors that strictly reflect the proto.
  private static volatile io.grpc.MethodDescriptor<dev.agentflux.v1.SubmitRequest,
      dev.agentflux.v1.SubmitResponse> getSubmitMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "Submit",
      requestType = dev.agentflux.v1.SubmitRequest.class,
      responseType = dev.agentflux.v1.SubmitResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<dev.agentflux.v1.SubmitRequest,
      dev.agentflux.v1.SubmitResponse> getSubmitMethod() {
    io.grpc.MethodDescriptor<dev.agentflux.v1.SubmitRequest, dev.agentflux.v1.SubmitResponse> getSubmitMethod;
    if ((getSubmitMethod = AgentGatewayGrpc.getSubmitMethod) == null) {
      synchronized (AgentGatewayGrpc.class) {
        if ((getSubmitMethod = AgentGatewayGrpc.getSubmitMethod) == null) {
          AgentGatewayGrpc.getSubmitMethod = getSubmitMethod =
              io.grpc.MethodDescriptor.<dev.agentflux.v1.SubmitRequest, dev.agentflux.v1.SubmitResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "Submit"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.agentflux.v1.SubmitRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.agentflux.v1.SubmitResponse.getDefaultInstance()))
              .setSchemaDescriptor(new AgentGatewayMethodDescriptorSupplier("Submit"))
              .build();
        }
      }
    }
    return getSubmitMethod;
  }

  private static volatile io.grpc.MethodDescriptor<dev.agentflux.v1.StreamRunRequest,
      dev.agentflux.v1.StreamRunResponse> getStreamRunMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "StreamRun",
      requestType = dev.agentflux.v1.StreamRunRequest.class,
      responseType = dev.agentflux.v1.StreamRunResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.SERVER_STREAMING)
  public static io.grpc.MethodDescriptor<dev.agentflux.v1.StreamRunRequest,
      dev.agentflux.v1.StreamRunResponse> getStreamRunMethod() {
    io.grpc.MethodDescriptor<dev.agentflux.v1.StreamRunRequest, dev.agentflux.v1.StreamRunResponse> getStreamRunMethod;
    if ((getStreamRunMethod = AgentGatewayGrpc.getStreamRunMethod) == null) {
      synchronized (AgentGatewayGrpc.class) {
        if ((getStreamRunMethod = AgentGatewayGrpc.getStreamRunMethod) == null) {
          AgentGatewayGrpc.getStreamRunMethod = getStreamRunMethod =
              io.grpc.MethodDescriptor.<dev.agentflux.v1.StreamRunRequest, dev.agentflux.v1.StreamRunResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.SERVER_STREAMING)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "StreamRun"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.agentflux.v1.StreamRunRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.agentflux.v1.StreamRunResponse.getDefaultInstance()))
              .setSchemaDescriptor(new AgentGatewayMethodDescriptorSupplier("StreamRun"))
              .build();
        }
      }
    }
    return getStreamRunMethod;
  }

  private static volatile io.grpc.MethodDescriptor<dev.agentflux.v1.GetRunRequest,
      dev.agentflux.v1.GetRunResponse> getGetRunMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "GetRun",
      requestType = dev.agentflux.v1.GetRunRequest.class,
      responseType = dev.agentflux.v1.GetRunResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<dev.agentflux.v1.GetRunRequest,
      dev.agentflux.v1.GetRunResponse> getGetRunMethod() {
    io.grpc.MethodDescriptor<dev.agentflux.v1.GetRunRequest, dev.agentflux.v1.GetRunResponse> getGetRunMethod;
    if ((getGetRunMethod = AgentGatewayGrpc.getGetRunMethod) == null) {
      synchronized (AgentGatewayGrpc.class) {
        if ((getGetRunMethod = AgentGatewayGrpc.getGetRunMethod) == null) {
          AgentGatewayGrpc.getGetRunMethod = getGetRunMethod =
              io.grpc.MethodDescriptor.<dev.agentflux.v1.GetRunRequest, dev.agentflux.v1.GetRunResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "GetRun"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.agentflux.v1.GetRunRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.agentflux.v1.GetRunResponse.getDefaultInstance()))
              .setSchemaDescriptor(new AgentGatewayMethodDescriptorSupplier("GetRun"))
              .build();
        }
      }
    }
    return getGetRunMethod;
  }

  private static volatile io.grpc.MethodDescriptor<dev.agentflux.v1.ListRunsRequest,
      dev.agentflux.v1.ListRunsResponse> getListRunsMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "ListRuns",
      requestType = dev.agentflux.v1.ListRunsRequest.class,
      responseType = dev.agentflux.v1.ListRunsResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<dev.agentflux.v1.ListRunsRequest,
      dev.agentflux.v1.ListRunsResponse> getListRunsMethod() {
    io.grpc.MethodDescriptor<dev.agentflux.v1.ListRunsRequest, dev.agentflux.v1.ListRunsResponse> getListRunsMethod;
    if ((getListRunsMethod = AgentGatewayGrpc.getListRunsMethod) == null) {
      synchronized (AgentGatewayGrpc.class) {
        if ((getListRunsMethod = AgentGatewayGrpc.getListRunsMethod) == null) {
          AgentGatewayGrpc.getListRunsMethod = getListRunsMethod =
              io.grpc.MethodDescriptor.<dev.agentflux.v1.ListRunsRequest, dev.agentflux.v1.ListRunsResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "ListRuns"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.agentflux.v1.ListRunsRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.agentflux.v1.ListRunsResponse.getDefaultInstance()))
              .setSchemaDescriptor(new AgentGatewayMethodDescriptorSupplier("ListRuns"))
              .build();
        }
      }
    }
    return getListRunsMethod;
  }

  private static volatile io.grpc.MethodDescriptor<dev.agentflux.v1.CancelRunRequest,
      dev.agentflux.v1.CancelRunResponse> getCancelRunMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "CancelRun",
      requestType = dev.agentflux.v1.CancelRunRequest.class,
      responseType = dev.agentflux.v1.CancelRunResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<dev.agentflux.v1.CancelRunRequest,
      dev.agentflux.v1.CancelRunResponse> getCancelRunMethod() {
    io.grpc.MethodDescriptor<dev.agentflux.v1.CancelRunRequest, dev.agentflux.v1.CancelRunResponse> getCancelRunMethod;
    if ((getCancelRunMethod = AgentGatewayGrpc.getCancelRunMethod) == null) {
      synchronized (AgentGatewayGrpc.class) {
        if ((getCancelRunMethod = AgentGatewayGrpc.getCancelRunMethod) == null) {
          AgentGatewayGrpc.getCancelRunMethod = getCancelRunMethod =
              io.grpc.MethodDescriptor.<dev.agentflux.v1.CancelRunRequest, dev.agentflux.v1.CancelRunResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "CancelRun"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.agentflux.v1.CancelRunRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.agentflux.v1.CancelRunResponse.getDefaultInstance()))
              .setSchemaDescriptor(new AgentGatewayMethodDescriptorSupplier("CancelRun"))
              .build();
        }
      }
    }
    return getCancelRunMethod;
  }

  private static volatile io.grpc.MethodDescriptor<dev.agentflux.v1.SearchResponsesRequest,
      dev.agentflux.v1.SearchResponsesResponse> getSearchResponsesMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "SearchResponses",
      requestType = dev.agentflux.v1.SearchResponsesRequest.class,
      responseType = dev.agentflux.v1.SearchResponsesResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<dev.agentflux.v1.SearchResponsesRequest,
      dev.agentflux.v1.SearchResponsesResponse> getSearchResponsesMethod() {
    io.grpc.MethodDescriptor<dev.agentflux.v1.SearchResponsesRequest, dev.agentflux.v1.SearchResponsesResponse> getSearchResponsesMethod;
    if ((getSearchResponsesMethod = AgentGatewayGrpc.getSearchResponsesMethod) == null) {
      synchronized (AgentGatewayGrpc.class) {
        if ((getSearchResponsesMethod = AgentGatewayGrpc.getSearchResponsesMethod) == null) {
          AgentGatewayGrpc.getSearchResponsesMethod = getSearchResponsesMethod =
              io.grpc.MethodDescriptor.<dev.agentflux.v1.SearchResponsesRequest, dev.agentflux.v1.SearchResponsesResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "SearchResponses"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.agentflux.v1.SearchResponsesRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.agentflux.v1.SearchResponsesResponse.getDefaultInstance()))
              .setSchemaDescriptor(new AgentGatewayMethodDescriptorSupplier("SearchResponses"))
              .build();
        }
      }
    }
    return getSearchResponsesMethod;
  }

  private static volatile io.grpc.MethodDescriptor<dev.agentflux.v1.ApproveToolCallRequest,
      dev.agentflux.v1.ApproveToolCallResponse> getApproveToolCallMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "ApproveToolCall",
      requestType = dev.agentflux.v1.ApproveToolCallRequest.class,
      responseType = dev.agentflux.v1.ApproveToolCallResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<dev.agentflux.v1.ApproveToolCallRequest,
      dev.agentflux.v1.ApproveToolCallResponse> getApproveToolCallMethod() {
    io.grpc.MethodDescriptor<dev.agentflux.v1.ApproveToolCallRequest, dev.agentflux.v1.ApproveToolCallResponse> getApproveToolCallMethod;
    if ((getApproveToolCallMethod = AgentGatewayGrpc.getApproveToolCallMethod) == null) {
      synchronized (AgentGatewayGrpc.class) {
        if ((getApproveToolCallMethod = AgentGatewayGrpc.getApproveToolCallMethod) == null) {
          AgentGatewayGrpc.getApproveToolCallMethod = getApproveToolCallMethod =
              io.grpc.MethodDescriptor.<dev.agentflux.v1.ApproveToolCallRequest, dev.agentflux.v1.ApproveToolCallResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "ApproveToolCall"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.agentflux.v1.ApproveToolCallRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.agentflux.v1.ApproveToolCallResponse.getDefaultInstance()))
              .setSchemaDescriptor(new AgentGatewayMethodDescriptorSupplier("ApproveToolCall"))
              .build();
        }
      }
    }
    return getApproveToolCallMethod;
  }

  private static volatile io.grpc.MethodDescriptor<dev.agentflux.v1.RejectToolCallRequest,
      dev.agentflux.v1.RejectToolCallResponse> getRejectToolCallMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "RejectToolCall",
      requestType = dev.agentflux.v1.RejectToolCallRequest.class,
      responseType = dev.agentflux.v1.RejectToolCallResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<dev.agentflux.v1.RejectToolCallRequest,
      dev.agentflux.v1.RejectToolCallResponse> getRejectToolCallMethod() {
    io.grpc.MethodDescriptor<dev.agentflux.v1.RejectToolCallRequest, dev.agentflux.v1.RejectToolCallResponse> getRejectToolCallMethod;
    if ((getRejectToolCallMethod = AgentGatewayGrpc.getRejectToolCallMethod) == null) {
      synchronized (AgentGatewayGrpc.class) {
        if ((getRejectToolCallMethod = AgentGatewayGrpc.getRejectToolCallMethod) == null) {
          AgentGatewayGrpc.getRejectToolCallMethod = getRejectToolCallMethod =
              io.grpc.MethodDescriptor.<dev.agentflux.v1.RejectToolCallRequest, dev.agentflux.v1.RejectToolCallResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "RejectToolCall"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.agentflux.v1.RejectToolCallRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.agentflux.v1.RejectToolCallResponse.getDefaultInstance()))
              .setSchemaDescriptor(new AgentGatewayMethodDescriptorSupplier("RejectToolCall"))
              .build();
        }
      }
    }
    return getRejectToolCallMethod;
  }

  /**
   * Creates a new async stub that supports all call types for the service
   */
  public static AgentGatewayStub newStub(io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<AgentGatewayStub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<AgentGatewayStub>() {
        @java.lang.Override
        public AgentGatewayStub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new AgentGatewayStub(channel, callOptions);
        }
      };
    return AgentGatewayStub.newStub(factory, channel);
  }

  /**
   * Creates a new blocking-style stub that supports all types of calls on the service
   */
  public static AgentGatewayBlockingV2Stub newBlockingV2Stub(
      io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<AgentGatewayBlockingV2Stub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<AgentGatewayBlockingV2Stub>() {
        @java.lang.Override
        public AgentGatewayBlockingV2Stub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new AgentGatewayBlockingV2Stub(channel, callOptions);
        }
      };
    return AgentGatewayBlockingV2Stub.newStub(factory, channel);
  }

  /**
   * Creates a new blocking-style stub that supports unary and streaming output calls on the service
   */
  public static AgentGatewayBlockingStub newBlockingStub(
      io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<AgentGatewayBlockingStub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<AgentGatewayBlockingStub>() {
        @java.lang.Override
        public AgentGatewayBlockingStub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new AgentGatewayBlockingStub(channel, callOptions);
        }
      };
    return AgentGatewayBlockingStub.newStub(factory, channel);
  }

  /**
   * Creates a new ListenableFuture-style stub that supports unary calls on the service
   */
  public static AgentGatewayFutureStub newFutureStub(
      io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<AgentGatewayFutureStub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<AgentGatewayFutureStub>() {
        @java.lang.Override
        public AgentGatewayFutureStub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new AgentGatewayFutureStub(channel, callOptions);
        }
      };
    return AgentGatewayFutureStub.newStub(factory, channel);
  }

  /**
   * <pre>
   * The public entry point of agentflux. Callers submit prompts, follow a run's
   * progress, look runs up, cancel them and search finished answers. The tenant is
   * taken from the caller's credentials; a run of another tenant is NOT_FOUND.
   * Credentials: every call presents an API key, as `authorization: Bearer &lt;key&gt;` or
   * `x-api-key: &lt;key&gt;`; the key names the caller's tenant. A missing, unknown or revoked
   * key is UNAUTHENTICATED. A run, stream, answer or search result of another tenant is
   * NOT_FOUND, never PERMISSION_DENIED, so no caller learns that it exists. With TLS on,
   * the port speaks TLS only (and, with a client CA, requires a client certificate).
   * Limits: over its tenant's sliding-window rate limit, or with too many runs in
   * flight, a call is RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo` detail saying when
   * to retry; out of token budget, RESOURCE_EXHAUSTED with a `google.rpc.QuotaFailure`
   * detail naming the budget. A request larger than the gateway reads is
   * RESOURCE_EXHAUSTED. Invalid fields are INVALID_ARGUMENT with a
   * `google.rpc.BadRequest` detail naming each field at fault. A `request_id` reused for
   * a different request is ALREADY_EXISTS, naming the run it started.
   * Metadata the gateway reads on every call (all optional):
   *   x-correlation-id  ties everything one request causes together; created when
   *                     absent. Echoed in the initial response metadata.
   *   x-request-id      this call's id (the causation id of what it emits); created
   *                     when absent. Echoed in the initial response metadata.
   *   idempotency-key   carried to every event and task the call causes.
   *   x-tenant-id       the tenant when credentials are off (a local deployment);
   *                     with an API key, ignored: the key alone names the tenant.
   *   traceparent, tracestate
   *                     W3C trace context; the call's span continues that trace.
   * A malformed value is refused with INVALID_ARGUMENT naming the key. Every key and
   * its format: docs/wire-protocol.md.
   * Reading what you wrote: as soon as `Submit` returns, `GetRun`, `StreamRun` and
   * `ListRuns` find the run (never NOT_FOUND); once a stream delivered `finished`,
   * `GetRun` returns the finished run.
   * One vocabulary for how a run ends: `RunFinished.status` (a `CompletionStatus`)
   * and `Run.status` (a `RunStatus`) map one to one on the terminal states:
   * COMPLETION_STATUS_COMPLETED = RUN_STATUS_COMPLETED, COMPLETION_STATUS_FAILED =
   * RUN_STATUS_FAILED, COMPLETION_STATUS_CANCELLED = RUN_STATUS_CANCELLED.
   * The answer appears in three places, equal once the run finished: the joined
   * `AnswerDelta` texts of the stream, `RunFinished.answer.text`, and
   * `Run.answer.text` from `GetRun`.
   * </pre>
   */
  public interface AsyncService {

    /**
     * <pre>
     * Starts a run and returns at once with its identifier, in `RUN_STATUS_PENDING`.
     * Retrying with the same `request_id` returns the run the first call started
     * instead of a new one.
     * </pre>
     */
    default void submit(dev.agentflux.v1.SubmitRequest request,
        io.grpc.stub.StreamObserver<dev.agentflux.v1.SubmitResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getSubmitMethod(), responseObserver);
    }

    /**
     * <pre>
     * Streams a run's progress until it ends: first `accepted`, then the planning,
     * tool and answer events, last `finished`. Every event has an `event_id`; a client
     * that lost the stream passes the last `event_id` it saw as `after_event_id` and
     * receives only later events, so the joined answer deltas continue exactly where
     * it stopped. Events of a finished run can be replayed for the stream retention
     * of the deployment (`AGENTFLUX_STREAM_RETENTION_S`, one hour by default); after
     * that the run's events are gone and the call returns NOT_FOUND (`GetRun` still
     * answers). An `after_event_id` that is not an id of this run's stream returns
     * OUT_OF_RANGE; one that is malformed, INVALID_ARGUMENT.
     * </pre>
     */
    default void streamRun(dev.agentflux.v1.StreamRunRequest request,
        io.grpc.stub.StreamObserver<dev.agentflux.v1.StreamRunResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getStreamRunMethod(), responseObserver);
    }

    /**
     * <pre>
     * Returns the current state of a run.
     * </pre>
     */
    default void getRun(dev.agentflux.v1.GetRunRequest request,
        io.grpc.stub.StreamObserver<dev.agentflux.v1.GetRunResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getGetRunMethod(), responseObserver);
    }

    /**
     * <pre>
     * Lists the caller's runs, newest first, a page at a time.
     * </pre>
     */
    default void listRuns(dev.agentflux.v1.ListRunsRequest request,
        io.grpc.stub.StreamObserver<dev.agentflux.v1.ListRunsResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getListRunsMethod(), responseObserver);
    }

    /**
     * <pre>
     * Cancels a run. From the moment the call is taken no tool call of the run can
     * begin; tools already running are told to stop (and abandoned by their worker after
     * `AGENTFLUX_CANCEL_DEADLINE_S`), and the call returns once none runs any more: after
     * it returns, no tool side effect of the run starts. Calls waiting for approval are
     * rejected, queued ones are skipped, and the planner and composer start nothing new.
     * The run reads `RUN_STATUS_CANCELLING` until every hop has acknowledged, then
     * `RUN_STATUS_CANCELLED` (its stream ends with `finished` of status CANCELLED).
     * Cancelling a finished run returns it unchanged.
     * </pre>
     */
    default void cancelRun(dev.agentflux.v1.CancelRunRequest request,
        io.grpc.stub.StreamObserver<dev.agentflux.v1.CancelRunResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getCancelRunMethod(), responseObserver);
    }

    /**
     * <pre>
     * Searches the caller's finished answers.
     * </pre>
     */
    default void searchResponses(dev.agentflux.v1.SearchResponsesRequest request,
        io.grpc.stub.StreamObserver<dev.agentflux.v1.SearchResponsesResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getSearchResponsesMethod(), responseObserver);
    }

    /**
     * <pre>
     * Approves a tool call the run is waiting on (`RUN_STATUS_AWAITING_APPROVAL`): the
     * call runs and the run goes on. A call already decided answers FAILED_PRECONDITION.
     * </pre>
     */
    default void approveToolCall(dev.agentflux.v1.ApproveToolCallRequest request,
        io.grpc.stub.StreamObserver<dev.agentflux.v1.ApproveToolCallResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getApproveToolCallMethod(), responseObserver);
    }

    /**
     * <pre>
     * Rejects a tool call the run is waiting on: the tool never runs, its result is
     * `TOOL_CALL_STATUS_REJECTED` with the reason, and the run goes on without it.
     * </pre>
     */
    default void rejectToolCall(dev.agentflux.v1.RejectToolCallRequest request,
        io.grpc.stub.StreamObserver<dev.agentflux.v1.RejectToolCallResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getRejectToolCallMethod(), responseObserver);
    }
  }

  /**
   * Base class for the server implementation of the service AgentGateway.
   * <pre>
   * The public entry point of agentflux. Callers submit prompts, follow a run's
   * progress, look runs up, cancel them and search finished answers. The tenant is
   * taken from the caller's credentials; a run of another tenant is NOT_FOUND.
   * Credentials: every call presents an API key, as `authorization: Bearer &lt;key&gt;` or
   * `x-api-key: &lt;key&gt;`; the key names the caller's tenant. A missing, unknown or revoked
   * key is UNAUTHENTICATED. A run, stream, answer or search result of another tenant is
   * NOT_FOUND, never PERMISSION_DENIED, so no caller learns that it exists. With TLS on,
   * the port speaks TLS only (and, with a client CA, requires a client certificate).
   * Limits: over its tenant's sliding-window rate limit, or with too many runs in
   * flight, a call is RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo` detail saying when
   * to retry; out of token budget, RESOURCE_EXHAUSTED with a `google.rpc.QuotaFailure`
   * detail naming the budget. A request larger than the gateway reads is
   * RESOURCE_EXHAUSTED. Invalid fields are INVALID_ARGUMENT with a
   * `google.rpc.BadRequest` detail naming each field at fault. A `request_id` reused for
   * a different request is ALREADY_EXISTS, naming the run it started.
   * Metadata the gateway reads on every call (all optional):
   *   x-correlation-id  ties everything one request causes together; created when
   *                     absent. Echoed in the initial response metadata.
   *   x-request-id      this call's id (the causation id of what it emits); created
   *                     when absent. Echoed in the initial response metadata.
   *   idempotency-key   carried to every event and task the call causes.
   *   x-tenant-id       the tenant when credentials are off (a local deployment);
   *                     with an API key, ignored: the key alone names the tenant.
   *   traceparent, tracestate
   *                     W3C trace context; the call's span continues that trace.
   * A malformed value is refused with INVALID_ARGUMENT naming the key. Every key and
   * its format: docs/wire-protocol.md.
   * Reading what you wrote: as soon as `Submit` returns, `GetRun`, `StreamRun` and
   * `ListRuns` find the run (never NOT_FOUND); once a stream delivered `finished`,
   * `GetRun` returns the finished run.
   * One vocabulary for how a run ends: `RunFinished.status` (a `CompletionStatus`)
   * and `Run.status` (a `RunStatus`) map one to one on the terminal states:
   * COMPLETION_STATUS_COMPLETED = RUN_STATUS_COMPLETED, COMPLETION_STATUS_FAILED =
   * RUN_STATUS_FAILED, COMPLETION_STATUS_CANCELLED = RUN_STATUS_CANCELLED.
   * The answer appears in three places, equal once the run finished: the joined
   * `AnswerDelta` texts of the stream, `RunFinished.answer.text`, and
   * `Run.answer.text` from `GetRun`.
   * </pre>
   */
  public static abstract class AgentGatewayImplBase
      implements io.grpc.BindableService, AsyncService {

    @java.lang.Override public final io.grpc.ServerServiceDefinition bindService() {
      return AgentGatewayGrpc.bindService(this);
    }
  }

  /**
   * A stub to allow clients to do asynchronous rpc calls to service AgentGateway.
   * <pre>
   * The public entry point of agentflux. Callers submit prompts, follow a run's
   * progress, look runs up, cancel them and search finished answers. The tenant is
   * taken from the caller's credentials; a run of another tenant is NOT_FOUND.
   * Credentials: every call presents an API key, as `authorization: Bearer &lt;key&gt;` or
   * `x-api-key: &lt;key&gt;`; the key names the caller's tenant. A missing, unknown or revoked
   * key is UNAUTHENTICATED. A run, stream, answer or search result of another tenant is
   * NOT_FOUND, never PERMISSION_DENIED, so no caller learns that it exists. With TLS on,
   * the port speaks TLS only (and, with a client CA, requires a client certificate).
   * Limits: over its tenant's sliding-window rate limit, or with too many runs in
   * flight, a call is RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo` detail saying when
   * to retry; out of token budget, RESOURCE_EXHAUSTED with a `google.rpc.QuotaFailure`
   * detail naming the budget. A request larger than the gateway reads is
   * RESOURCE_EXHAUSTED. Invalid fields are INVALID_ARGUMENT with a
   * `google.rpc.BadRequest` detail naming each field at fault. A `request_id` reused for
   * a different request is ALREADY_EXISTS, naming the run it started.
   * Metadata the gateway reads on every call (all optional):
   *   x-correlation-id  ties everything one request causes together; created when
   *                     absent. Echoed in the initial response metadata.
   *   x-request-id      this call's id (the causation id of what it emits); created
   *                     when absent. Echoed in the initial response metadata.
   *   idempotency-key   carried to every event and task the call causes.
   *   x-tenant-id       the tenant when credentials are off (a local deployment);
   *                     with an API key, ignored: the key alone names the tenant.
   *   traceparent, tracestate
   *                     W3C trace context; the call's span continues that trace.
   * A malformed value is refused with INVALID_ARGUMENT naming the key. Every key and
   * its format: docs/wire-protocol.md.
   * Reading what you wrote: as soon as `Submit` returns, `GetRun`, `StreamRun` and
   * `ListRuns` find the run (never NOT_FOUND); once a stream delivered `finished`,
   * `GetRun` returns the finished run.
   * One vocabulary for how a run ends: `RunFinished.status` (a `CompletionStatus`)
   * and `Run.status` (a `RunStatus`) map one to one on the terminal states:
   * COMPLETION_STATUS_COMPLETED = RUN_STATUS_COMPLETED, COMPLETION_STATUS_FAILED =
   * RUN_STATUS_FAILED, COMPLETION_STATUS_CANCELLED = RUN_STATUS_CANCELLED.
   * The answer appears in three places, equal once the run finished: the joined
   * `AnswerDelta` texts of the stream, `RunFinished.answer.text`, and
   * `Run.answer.text` from `GetRun`.
   * </pre>
   */
  public static final class AgentGatewayStub
      extends io.grpc.stub.AbstractAsyncStub<AgentGatewayStub> {
    private AgentGatewayStub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected AgentGatewayStub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new AgentGatewayStub(channel, callOptions);
    }

    /**
     * <pre>
     * Starts a run and returns at once with its identifier, in `RUN_STATUS_PENDING`.
     * Retrying with the same `request_id` returns the run the first call started
     * instead of a new one.
     * </pre>
     */
    public void submit(dev.agentflux.v1.SubmitRequest request,
        io.grpc.stub.StreamObserver<dev.agentflux.v1.SubmitResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getSubmitMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * Streams a run's progress until it ends: first `accepted`, then the planning,
     * tool and answer events, last `finished`. Every event has an `event_id`; a client
     * that lost the stream passes the last `event_id` it saw as `after_event_id` and
     * receives only later events, so the joined answer deltas continue exactly where
     * it stopped. Events of a finished run can be replayed for the stream retention
     * of the deployment (`AGENTFLUX_STREAM_RETENTION_S`, one hour by default); after
     * that the run's events are gone and the call returns NOT_FOUND (`GetRun` still
     * answers). An `after_event_id` that is not an id of this run's stream returns
     * OUT_OF_RANGE; one that is malformed, INVALID_ARGUMENT.
     * </pre>
     */
    public void streamRun(dev.agentflux.v1.StreamRunRequest request,
        io.grpc.stub.StreamObserver<dev.agentflux.v1.StreamRunResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncServerStreamingCall(
          getChannel().newCall(getStreamRunMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * Returns the current state of a run.
     * </pre>
     */
    public void getRun(dev.agentflux.v1.GetRunRequest request,
        io.grpc.stub.StreamObserver<dev.agentflux.v1.GetRunResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getGetRunMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * Lists the caller's runs, newest first, a page at a time.
     * </pre>
     */
    public void listRuns(dev.agentflux.v1.ListRunsRequest request,
        io.grpc.stub.StreamObserver<dev.agentflux.v1.ListRunsResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getListRunsMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * Cancels a run. From the moment the call is taken no tool call of the run can
     * begin; tools already running are told to stop (and abandoned by their worker after
     * `AGENTFLUX_CANCEL_DEADLINE_S`), and the call returns once none runs any more: after
     * it returns, no tool side effect of the run starts. Calls waiting for approval are
     * rejected, queued ones are skipped, and the planner and composer start nothing new.
     * The run reads `RUN_STATUS_CANCELLING` until every hop has acknowledged, then
     * `RUN_STATUS_CANCELLED` (its stream ends with `finished` of status CANCELLED).
     * Cancelling a finished run returns it unchanged.
     * </pre>
     */
    public void cancelRun(dev.agentflux.v1.CancelRunRequest request,
        io.grpc.stub.StreamObserver<dev.agentflux.v1.CancelRunResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getCancelRunMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * Searches the caller's finished answers.
     * </pre>
     */
    public void searchResponses(dev.agentflux.v1.SearchResponsesRequest request,
        io.grpc.stub.StreamObserver<dev.agentflux.v1.SearchResponsesResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getSearchResponsesMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * Approves a tool call the run is waiting on (`RUN_STATUS_AWAITING_APPROVAL`): the
     * call runs and the run goes on. A call already decided answers FAILED_PRECONDITION.
     * </pre>
     */
    public void approveToolCall(dev.agentflux.v1.ApproveToolCallRequest request,
        io.grpc.stub.StreamObserver<dev.agentflux.v1.ApproveToolCallResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getApproveToolCallMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * Rejects a tool call the run is waiting on: the tool never runs, its result is
     * `TOOL_CALL_STATUS_REJECTED` with the reason, and the run goes on without it.
     * </pre>
     */
    public void rejectToolCall(dev.agentflux.v1.RejectToolCallRequest request,
        io.grpc.stub.StreamObserver<dev.agentflux.v1.RejectToolCallResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getRejectToolCallMethod(), getCallOptions()), request, responseObserver);
    }
  }

  /**
   * A stub to allow clients to do synchronous rpc calls to service AgentGateway.
   * <pre>
   * The public entry point of agentflux. Callers submit prompts, follow a run's
   * progress, look runs up, cancel them and search finished answers. The tenant is
   * taken from the caller's credentials; a run of another tenant is NOT_FOUND.
   * Credentials: every call presents an API key, as `authorization: Bearer &lt;key&gt;` or
   * `x-api-key: &lt;key&gt;`; the key names the caller's tenant. A missing, unknown or revoked
   * key is UNAUTHENTICATED. A run, stream, answer or search result of another tenant is
   * NOT_FOUND, never PERMISSION_DENIED, so no caller learns that it exists. With TLS on,
   * the port speaks TLS only (and, with a client CA, requires a client certificate).
   * Limits: over its tenant's sliding-window rate limit, or with too many runs in
   * flight, a call is RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo` detail saying when
   * to retry; out of token budget, RESOURCE_EXHAUSTED with a `google.rpc.QuotaFailure`
   * detail naming the budget. A request larger than the gateway reads is
   * RESOURCE_EXHAUSTED. Invalid fields are INVALID_ARGUMENT with a
   * `google.rpc.BadRequest` detail naming each field at fault. A `request_id` reused for
   * a different request is ALREADY_EXISTS, naming the run it started.
   * Metadata the gateway reads on every call (all optional):
   *   x-correlation-id  ties everything one request causes together; created when
   *                     absent. Echoed in the initial response metadata.
   *   x-request-id      this call's id (the causation id of what it emits); created
   *                     when absent. Echoed in the initial response metadata.
   *   idempotency-key   carried to every event and task the call causes.
   *   x-tenant-id       the tenant when credentials are off (a local deployment);
   *                     with an API key, ignored: the key alone names the tenant.
   *   traceparent, tracestate
   *                     W3C trace context; the call's span continues that trace.
   * A malformed value is refused with INVALID_ARGUMENT naming the key. Every key and
   * its format: docs/wire-protocol.md.
   * Reading what you wrote: as soon as `Submit` returns, `GetRun`, `StreamRun` and
   * `ListRuns` find the run (never NOT_FOUND); once a stream delivered `finished`,
   * `GetRun` returns the finished run.
   * One vocabulary for how a run ends: `RunFinished.status` (a `CompletionStatus`)
   * and `Run.status` (a `RunStatus`) map one to one on the terminal states:
   * COMPLETION_STATUS_COMPLETED = RUN_STATUS_COMPLETED, COMPLETION_STATUS_FAILED =
   * RUN_STATUS_FAILED, COMPLETION_STATUS_CANCELLED = RUN_STATUS_CANCELLED.
   * The answer appears in three places, equal once the run finished: the joined
   * `AnswerDelta` texts of the stream, `RunFinished.answer.text`, and
   * `Run.answer.text` from `GetRun`.
   * </pre>
   */
  public static final class AgentGatewayBlockingV2Stub
      extends io.grpc.stub.AbstractBlockingStub<AgentGatewayBlockingV2Stub> {
    private AgentGatewayBlockingV2Stub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected AgentGatewayBlockingV2Stub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new AgentGatewayBlockingV2Stub(channel, callOptions);
    }

    /**
     * <pre>
     * Starts a run and returns at once with its identifier, in `RUN_STATUS_PENDING`.
     * Retrying with the same `request_id` returns the run the first call started
     * instead of a new one.
     * </pre>
     */
    public dev.agentflux.v1.SubmitResponse submit(dev.agentflux.v1.SubmitRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getSubmitMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * Streams a run's progress until it ends: first `accepted`, then the planning,
     * tool and answer events, last `finished`. Every event has an `event_id`; a client
     * that lost the stream passes the last `event_id` it saw as `after_event_id` and
     * receives only later events, so the joined answer deltas continue exactly where
     * it stopped. Events of a finished run can be replayed for the stream retention
     * of the deployment (`AGENTFLUX_STREAM_RETENTION_S`, one hour by default); after
     * that the run's events are gone and the call returns NOT_FOUND (`GetRun` still
     * answers). An `after_event_id` that is not an id of this run's stream returns
     * OUT_OF_RANGE; one that is malformed, INVALID_ARGUMENT.
     * </pre>
     */
    @io.grpc.ExperimentalApi("https://github.com/grpc/grpc-java/issues/10918")
    public io.grpc.stub.BlockingClientCall<?, dev.agentflux.v1.StreamRunResponse>
        streamRun(dev.agentflux.v1.StreamRunRequest request) {
      return io.grpc.stub.ClientCalls.blockingV2ServerStreamingCall(
          getChannel(), getStreamRunMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * Returns the current state of a run.
     * </pre>
     */
    public dev.agentflux.v1.GetRunResponse getRun(dev.agentflux.v1.GetRunRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getGetRunMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * Lists the caller's runs, newest first, a page at a time.
     * </pre>
     */
    public dev.agentflux.v1.ListRunsResponse listRuns(dev.agentflux.v1.ListRunsRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getListRunsMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * Cancels a run. From the moment the call is taken no tool call of the run can
     * begin; tools already running are told to stop (and abandoned by their worker after
     * `AGENTFLUX_CANCEL_DEADLINE_S`), and the call returns once none runs any more: after
     * it returns, no tool side effect of the run starts. Calls waiting for approval are
     * rejected, queued ones are skipped, and the planner and composer start nothing new.
     * The run reads `RUN_STATUS_CANCELLING` until every hop has acknowledged, then
     * `RUN_STATUS_CANCELLED` (its stream ends with `finished` of status CANCELLED).
     * Cancelling a finished run returns it unchanged.
     * </pre>
     */
    public dev.agentflux.v1.CancelRunResponse cancelRun(dev.agentflux.v1.CancelRunRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getCancelRunMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * Searches the caller's finished answers.
     * </pre>
     */
    public dev.agentflux.v1.SearchResponsesResponse searchResponses(dev.agentflux.v1.SearchResponsesRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getSearchResponsesMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * Approves a tool call the run is waiting on (`RUN_STATUS_AWAITING_APPROVAL`): the
     * call runs and the run goes on. A call already decided answers FAILED_PRECONDITION.
     * </pre>
     */
    public dev.agentflux.v1.ApproveToolCallResponse approveToolCall(dev.agentflux.v1.ApproveToolCallRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getApproveToolCallMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * Rejects a tool call the run is waiting on: the tool never runs, its result is
     * `TOOL_CALL_STATUS_REJECTED` with the reason, and the run goes on without it.
     * </pre>
     */
    public dev.agentflux.v1.RejectToolCallResponse rejectToolCall(dev.agentflux.v1.RejectToolCallRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getRejectToolCallMethod(), getCallOptions(), request);
    }
  }

  /**
   * A stub to allow clients to do limited synchronous rpc calls to service AgentGateway.
   * <pre>
   * The public entry point of agentflux. Callers submit prompts, follow a run's
   * progress, look runs up, cancel them and search finished answers. The tenant is
   * taken from the caller's credentials; a run of another tenant is NOT_FOUND.
   * Credentials: every call presents an API key, as `authorization: Bearer &lt;key&gt;` or
   * `x-api-key: &lt;key&gt;`; the key names the caller's tenant. A missing, unknown or revoked
   * key is UNAUTHENTICATED. A run, stream, answer or search result of another tenant is
   * NOT_FOUND, never PERMISSION_DENIED, so no caller learns that it exists. With TLS on,
   * the port speaks TLS only (and, with a client CA, requires a client certificate).
   * Limits: over its tenant's sliding-window rate limit, or with too many runs in
   * flight, a call is RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo` detail saying when
   * to retry; out of token budget, RESOURCE_EXHAUSTED with a `google.rpc.QuotaFailure`
   * detail naming the budget. A request larger than the gateway reads is
   * RESOURCE_EXHAUSTED. Invalid fields are INVALID_ARGUMENT with a
   * `google.rpc.BadRequest` detail naming each field at fault. A `request_id` reused for
   * a different request is ALREADY_EXISTS, naming the run it started.
   * Metadata the gateway reads on every call (all optional):
   *   x-correlation-id  ties everything one request causes together; created when
   *                     absent. Echoed in the initial response metadata.
   *   x-request-id      this call's id (the causation id of what it emits); created
   *                     when absent. Echoed in the initial response metadata.
   *   idempotency-key   carried to every event and task the call causes.
   *   x-tenant-id       the tenant when credentials are off (a local deployment);
   *                     with an API key, ignored: the key alone names the tenant.
   *   traceparent, tracestate
   *                     W3C trace context; the call's span continues that trace.
   * A malformed value is refused with INVALID_ARGUMENT naming the key. Every key and
   * its format: docs/wire-protocol.md.
   * Reading what you wrote: as soon as `Submit` returns, `GetRun`, `StreamRun` and
   * `ListRuns` find the run (never NOT_FOUND); once a stream delivered `finished`,
   * `GetRun` returns the finished run.
   * One vocabulary for how a run ends: `RunFinished.status` (a `CompletionStatus`)
   * and `Run.status` (a `RunStatus`) map one to one on the terminal states:
   * COMPLETION_STATUS_COMPLETED = RUN_STATUS_COMPLETED, COMPLETION_STATUS_FAILED =
   * RUN_STATUS_FAILED, COMPLETION_STATUS_CANCELLED = RUN_STATUS_CANCELLED.
   * The answer appears in three places, equal once the run finished: the joined
   * `AnswerDelta` texts of the stream, `RunFinished.answer.text`, and
   * `Run.answer.text` from `GetRun`.
   * </pre>
   */
  public static final class AgentGatewayBlockingStub
      extends io.grpc.stub.AbstractBlockingStub<AgentGatewayBlockingStub> {
    private AgentGatewayBlockingStub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected AgentGatewayBlockingStub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new AgentGatewayBlockingStub(channel, callOptions);
    }

    /**
     * <pre>
     * Starts a run and returns at once with its identifier, in `RUN_STATUS_PENDING`.
     * Retrying with the same `request_id` returns the run the first call started
     * instead of a new one.
     * </pre>
     */
    public dev.agentflux.v1.SubmitResponse submit(dev.agentflux.v1.SubmitRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getSubmitMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * Streams a run's progress until it ends: first `accepted`, then the planning,
     * tool and answer events, last `finished`. Every event has an `event_id`; a client
     * that lost the stream passes the last `event_id` it saw as `after_event_id` and
     * receives only later events, so the joined answer deltas continue exactly where
     * it stopped. Events of a finished run can be replayed for the stream retention
     * of the deployment (`AGENTFLUX_STREAM_RETENTION_S`, one hour by default); after
     * that the run's events are gone and the call returns NOT_FOUND (`GetRun` still
     * answers). An `after_event_id` that is not an id of this run's stream returns
     * OUT_OF_RANGE; one that is malformed, INVALID_ARGUMENT.
     * </pre>
     */
    public java.util.Iterator<dev.agentflux.v1.StreamRunResponse> streamRun(
        dev.agentflux.v1.StreamRunRequest request) {
      return io.grpc.stub.ClientCalls.blockingServerStreamingCall(
          getChannel(), getStreamRunMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * Returns the current state of a run.
     * </pre>
     */
    public dev.agentflux.v1.GetRunResponse getRun(dev.agentflux.v1.GetRunRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getGetRunMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * Lists the caller's runs, newest first, a page at a time.
     * </pre>
     */
    public dev.agentflux.v1.ListRunsResponse listRuns(dev.agentflux.v1.ListRunsRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getListRunsMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * Cancels a run. From the moment the call is taken no tool call of the run can
     * begin; tools already running are told to stop (and abandoned by their worker after
     * `AGENTFLUX_CANCEL_DEADLINE_S`), and the call returns once none runs any more: after
     * it returns, no tool side effect of the run starts. Calls waiting for approval are
     * rejected, queued ones are skipped, and the planner and composer start nothing new.
     * The run reads `RUN_STATUS_CANCELLING` until every hop has acknowledged, then
     * `RUN_STATUS_CANCELLED` (its stream ends with `finished` of status CANCELLED).
     * Cancelling a finished run returns it unchanged.
     * </pre>
     */
    public dev.agentflux.v1.CancelRunResponse cancelRun(dev.agentflux.v1.CancelRunRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getCancelRunMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * Searches the caller's finished answers.
     * </pre>
     */
    public dev.agentflux.v1.SearchResponsesResponse searchResponses(dev.agentflux.v1.SearchResponsesRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getSearchResponsesMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * Approves a tool call the run is waiting on (`RUN_STATUS_AWAITING_APPROVAL`): the
     * call runs and the run goes on. A call already decided answers FAILED_PRECONDITION.
     * </pre>
     */
    public dev.agentflux.v1.ApproveToolCallResponse approveToolCall(dev.agentflux.v1.ApproveToolCallRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getApproveToolCallMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * Rejects a tool call the run is waiting on: the tool never runs, its result is
     * `TOOL_CALL_STATUS_REJECTED` with the reason, and the run goes on without it.
     * </pre>
     */
    public dev.agentflux.v1.RejectToolCallResponse rejectToolCall(dev.agentflux.v1.RejectToolCallRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getRejectToolCallMethod(), getCallOptions(), request);
    }
  }

  /**
   * A stub to allow clients to do ListenableFuture-style rpc calls to service AgentGateway.
   * <pre>
   * The public entry point of agentflux. Callers submit prompts, follow a run's
   * progress, look runs up, cancel them and search finished answers. The tenant is
   * taken from the caller's credentials; a run of another tenant is NOT_FOUND.
   * Credentials: every call presents an API key, as `authorization: Bearer &lt;key&gt;` or
   * `x-api-key: &lt;key&gt;`; the key names the caller's tenant. A missing, unknown or revoked
   * key is UNAUTHENTICATED. A run, stream, answer or search result of another tenant is
   * NOT_FOUND, never PERMISSION_DENIED, so no caller learns that it exists. With TLS on,
   * the port speaks TLS only (and, with a client CA, requires a client certificate).
   * Limits: over its tenant's sliding-window rate limit, or with too many runs in
   * flight, a call is RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo` detail saying when
   * to retry; out of token budget, RESOURCE_EXHAUSTED with a `google.rpc.QuotaFailure`
   * detail naming the budget. A request larger than the gateway reads is
   * RESOURCE_EXHAUSTED. Invalid fields are INVALID_ARGUMENT with a
   * `google.rpc.BadRequest` detail naming each field at fault. A `request_id` reused for
   * a different request is ALREADY_EXISTS, naming the run it started.
   * Metadata the gateway reads on every call (all optional):
   *   x-correlation-id  ties everything one request causes together; created when
   *                     absent. Echoed in the initial response metadata.
   *   x-request-id      this call's id (the causation id of what it emits); created
   *                     when absent. Echoed in the initial response metadata.
   *   idempotency-key   carried to every event and task the call causes.
   *   x-tenant-id       the tenant when credentials are off (a local deployment);
   *                     with an API key, ignored: the key alone names the tenant.
   *   traceparent, tracestate
   *                     W3C trace context; the call's span continues that trace.
   * A malformed value is refused with INVALID_ARGUMENT naming the key. Every key and
   * its format: docs/wire-protocol.md.
   * Reading what you wrote: as soon as `Submit` returns, `GetRun`, `StreamRun` and
   * `ListRuns` find the run (never NOT_FOUND); once a stream delivered `finished`,
   * `GetRun` returns the finished run.
   * One vocabulary for how a run ends: `RunFinished.status` (a `CompletionStatus`)
   * and `Run.status` (a `RunStatus`) map one to one on the terminal states:
   * COMPLETION_STATUS_COMPLETED = RUN_STATUS_COMPLETED, COMPLETION_STATUS_FAILED =
   * RUN_STATUS_FAILED, COMPLETION_STATUS_CANCELLED = RUN_STATUS_CANCELLED.
   * The answer appears in three places, equal once the run finished: the joined
   * `AnswerDelta` texts of the stream, `RunFinished.answer.text`, and
   * `Run.answer.text` from `GetRun`.
   * </pre>
   */
  public static final class AgentGatewayFutureStub
      extends io.grpc.stub.AbstractFutureStub<AgentGatewayFutureStub> {
    private AgentGatewayFutureStub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected AgentGatewayFutureStub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new AgentGatewayFutureStub(channel, callOptions);
    }

    /**
     * <pre>
     * Starts a run and returns at once with its identifier, in `RUN_STATUS_PENDING`.
     * Retrying with the same `request_id` returns the run the first call started
     * instead of a new one.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<dev.agentflux.v1.SubmitResponse> submit(
        dev.agentflux.v1.SubmitRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getSubmitMethod(), getCallOptions()), request);
    }

    /**
     * <pre>
     * Returns the current state of a run.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<dev.agentflux.v1.GetRunResponse> getRun(
        dev.agentflux.v1.GetRunRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getGetRunMethod(), getCallOptions()), request);
    }

    /**
     * <pre>
     * Lists the caller's runs, newest first, a page at a time.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<dev.agentflux.v1.ListRunsResponse> listRuns(
        dev.agentflux.v1.ListRunsRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getListRunsMethod(), getCallOptions()), request);
    }

    /**
     * <pre>
     * Cancels a run. From the moment the call is taken no tool call of the run can
     * begin; tools already running are told to stop (and abandoned by their worker after
     * `AGENTFLUX_CANCEL_DEADLINE_S`), and the call returns once none runs any more: after
     * it returns, no tool side effect of the run starts. Calls waiting for approval are
     * rejected, queued ones are skipped, and the planner and composer start nothing new.
     * The run reads `RUN_STATUS_CANCELLING` until every hop has acknowledged, then
     * `RUN_STATUS_CANCELLED` (its stream ends with `finished` of status CANCELLED).
     * Cancelling a finished run returns it unchanged.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<dev.agentflux.v1.CancelRunResponse> cancelRun(
        dev.agentflux.v1.CancelRunRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getCancelRunMethod(), getCallOptions()), request);
    }

    /**
     * <pre>
     * Searches the caller's finished answers.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<dev.agentflux.v1.SearchResponsesResponse> searchResponses(
        dev.agentflux.v1.SearchResponsesRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getSearchResponsesMethod(), getCallOptions()), request);
    }

    /**
     * <pre>
     * Approves a tool call the run is waiting on (`RUN_STATUS_AWAITING_APPROVAL`): the
     * call runs and the run goes on. A call already decided answers FAILED_PRECONDITION.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<dev.agentflux.v1.ApproveToolCallResponse> approveToolCall(
        dev.agentflux.v1.ApproveToolCallRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getApproveToolCallMethod(), getCallOptions()), request);
    }

    /**
     * <pre>
     * Rejects a tool call the run is waiting on: the tool never runs, its result is
     * `TOOL_CALL_STATUS_REJECTED` with the reason, and the run goes on without it.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<dev.agentflux.v1.RejectToolCallResponse> rejectToolCall(
        dev.agentflux.v1.RejectToolCallRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getRejectToolCallMethod(), getCallOptions()), request);
    }
  }

  private static final int METHODID_SUBMIT = 0;
  private static final int METHODID_STREAM_RUN = 1;
  private static final int METHODID_GET_RUN = 2;
  private static final int METHODID_LIST_RUNS = 3;
  private static final int METHODID_CANCEL_RUN = 4;
  private static final int METHODID_SEARCH_RESPONSES = 5;
  private static final int METHODID_APPROVE_TOOL_CALL = 6;
  private static final int METHODID_REJECT_TOOL_CALL = 7;

  private static final class MethodHandlers<Req, Resp> implements
      io.grpc.stub.ServerCalls.UnaryMethod<Req, Resp>,
      io.grpc.stub.ServerCalls.ServerStreamingMethod<Req, Resp>,
      io.grpc.stub.ServerCalls.ClientStreamingMethod<Req, Resp>,
      io.grpc.stub.ServerCalls.BidiStreamingMethod<Req, Resp> {
    private final AsyncService serviceImpl;
    private final int methodId;

    MethodHandlers(AsyncService serviceImpl, int methodId) {
      this.serviceImpl = serviceImpl;
      this.methodId = methodId;
    }

    @java.lang.Override
    @java.lang.SuppressWarnings("unchecked")
    public void invoke(Req request, io.grpc.stub.StreamObserver<Resp> responseObserver) {
      switch (methodId) {
        case METHODID_SUBMIT:
          serviceImpl.submit((dev.agentflux.v1.SubmitRequest) request,
              (io.grpc.stub.StreamObserver<dev.agentflux.v1.SubmitResponse>) responseObserver);
          break;
        case METHODID_STREAM_RUN:
          serviceImpl.streamRun((dev.agentflux.v1.StreamRunRequest) request,
              (io.grpc.stub.StreamObserver<dev.agentflux.v1.StreamRunResponse>) responseObserver);
          break;
        case METHODID_GET_RUN:
          serviceImpl.getRun((dev.agentflux.v1.GetRunRequest) request,
              (io.grpc.stub.StreamObserver<dev.agentflux.v1.GetRunResponse>) responseObserver);
          break;
        case METHODID_LIST_RUNS:
          serviceImpl.listRuns((dev.agentflux.v1.ListRunsRequest) request,
              (io.grpc.stub.StreamObserver<dev.agentflux.v1.ListRunsResponse>) responseObserver);
          break;
        case METHODID_CANCEL_RUN:
          serviceImpl.cancelRun((dev.agentflux.v1.CancelRunRequest) request,
              (io.grpc.stub.StreamObserver<dev.agentflux.v1.CancelRunResponse>) responseObserver);
          break;
        case METHODID_SEARCH_RESPONSES:
          serviceImpl.searchResponses((dev.agentflux.v1.SearchResponsesRequest) request,
              (io.grpc.stub.StreamObserver<dev.agentflux.v1.SearchResponsesResponse>) responseObserver);
          break;
        case METHODID_APPROVE_TOOL_CALL:
          serviceImpl.approveToolCall((dev.agentflux.v1.ApproveToolCallRequest) request,
              (io.grpc.stub.StreamObserver<dev.agentflux.v1.ApproveToolCallResponse>) responseObserver);
          break;
        case METHODID_REJECT_TOOL_CALL:
          serviceImpl.rejectToolCall((dev.agentflux.v1.RejectToolCallRequest) request,
              (io.grpc.stub.StreamObserver<dev.agentflux.v1.RejectToolCallResponse>) responseObserver);
          break;
        default:
          throw new AssertionError();
      }
    }

    @java.lang.Override
    @java.lang.SuppressWarnings("unchecked")
    public io.grpc.stub.StreamObserver<Req> invoke(
        io.grpc.stub.StreamObserver<Resp> responseObserver) {
      switch (methodId) {
        default:
          throw new AssertionError();
      }
    }
  }

  public static final io.grpc.ServerServiceDefinition bindService(AsyncService service) {
    return io.grpc.ServerServiceDefinition.builder(getServiceDescriptor())
        .addMethod(
          getSubmitMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              dev.agentflux.v1.SubmitRequest,
              dev.agentflux.v1.SubmitResponse>(
                service, METHODID_SUBMIT)))
        .addMethod(
          getStreamRunMethod(),
          io.grpc.stub.ServerCalls.asyncServerStreamingCall(
            new MethodHandlers<
              dev.agentflux.v1.StreamRunRequest,
              dev.agentflux.v1.StreamRunResponse>(
                service, METHODID_STREAM_RUN)))
        .addMethod(
          getGetRunMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              dev.agentflux.v1.GetRunRequest,
              dev.agentflux.v1.GetRunResponse>(
                service, METHODID_GET_RUN)))
        .addMethod(
          getListRunsMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              dev.agentflux.v1.ListRunsRequest,
              dev.agentflux.v1.ListRunsResponse>(
                service, METHODID_LIST_RUNS)))
        .addMethod(
          getCancelRunMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              dev.agentflux.v1.CancelRunRequest,
              dev.agentflux.v1.CancelRunResponse>(
                service, METHODID_CANCEL_RUN)))
        .addMethod(
          getSearchResponsesMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              dev.agentflux.v1.SearchResponsesRequest,
              dev.agentflux.v1.SearchResponsesResponse>(
                service, METHODID_SEARCH_RESPONSES)))
        .addMethod(
          getApproveToolCallMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              dev.agentflux.v1.ApproveToolCallRequest,
              dev.agentflux.v1.ApproveToolCallResponse>(
                service, METHODID_APPROVE_TOOL_CALL)))
        .addMethod(
          getRejectToolCallMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              dev.agentflux.v1.RejectToolCallRequest,
              dev.agentflux.v1.RejectToolCallResponse>(
                service, METHODID_REJECT_TOOL_CALL)))
        .build();
  }

  private static abstract class AgentGatewayBaseDescriptorSupplier
      implements io.grpc.protobuf.ProtoFileDescriptorSupplier, io.grpc.protobuf.ProtoServiceDescriptorSupplier {
    AgentGatewayBaseDescriptorSupplier() {}

    @java.lang.Override
    public com.google.protobuf.Descriptors.FileDescriptor getFileDescriptor() {
      return dev.agentflux.v1.GatewayProto.getDescriptor();
    }

    @java.lang.Override
    public com.google.protobuf.Descriptors.ServiceDescriptor getServiceDescriptor() {
      return getFileDescriptor().findServiceByName("AgentGateway");
    }
  }

  private static final class AgentGatewayFileDescriptorSupplier
      extends AgentGatewayBaseDescriptorSupplier {
    AgentGatewayFileDescriptorSupplier() {}
  }

  private static final class AgentGatewayMethodDescriptorSupplier
      extends AgentGatewayBaseDescriptorSupplier
      implements io.grpc.protobuf.ProtoMethodDescriptorSupplier {
    private final java.lang.String methodName;

    AgentGatewayMethodDescriptorSupplier(java.lang.String methodName) {
      this.methodName = methodName;
    }

    @java.lang.Override
    public com.google.protobuf.Descriptors.MethodDescriptor getMethodDescriptor() {
      return getServiceDescriptor().findMethodByName(methodName);
    }
  }

  private static volatile io.grpc.ServiceDescriptor serviceDescriptor;

  public static io.grpc.ServiceDescriptor getServiceDescriptor() {
    io.grpc.ServiceDescriptor result = serviceDescriptor;
    if (result == null) {
      synchronized (AgentGatewayGrpc.class) {
        result = serviceDescriptor;
        if (result == null) {
          serviceDescriptor = result = io.grpc.ServiceDescriptor.newBuilder(SERVICE_NAME)
              .setSchemaDescriptor(new AgentGatewayFileDescriptorSupplier())
              .addMethod(getSubmitMethod())
              .addMethod(getStreamRunMethod())
              .addMethod(getGetRunMethod())
              .addMethod(getListRunsMethod())
              .addMethod(getCancelRunMethod())
              .addMethod(getSearchResponsesMethod())
              .addMethod(getApproveToolCallMethod())
              .addMethod(getRejectToolCallMethod())
              .build();
        }
      }
    }
    return result;
  }
}
