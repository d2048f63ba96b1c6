package dev.agentflux.v1;

import static io.grpc.MethodDescriptor.generateFullMethodName;

/**
 * <pre>
 * The retrieval index of finished answers, kept by the indexer as a projection of
 * `agent.completed`: every indexer replica builds the whole index, so any replica
 * answers. The gateway's `SearchResponses` and the `retrieve` tool query it.
 * </pre>
 */
@io.grpc.stub.annotations.GrpcGenerated
public final class ResponseIndexServiceGrpc {

  private ResponseIndexServiceGrpc() {}

  public static final java.lang.String SERVICE_NAME = "agentflux.v1.ResponseIndexService";

  // Static method descriptors that strictly reflect the proto.
  private static volatile io.grpc.MethodDescriptor<dev.agentflux.v1.SearchIndexRequest,
      dev.agentflux.v1.SearchIndexResponse> getSearchIndexMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "SearchIndex",
      requestType = dev.agentflux.v1.SearchIndexRequest.class,
      responseType = dev.agentflux.v1.SearchIndexResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<dev.agentflux.v1.SearchIndexRequest,
      dev.agentflux.v1.SearchIndexResponse> getSearchIndexMethod() {
    io.grpc.MethodDescriptor<dev.agentflux.v1.SearchIndexRequest, dev.agentflux.v1.SearchIndexResponse> getSearchIndexMethod;
    if ((getSearchIndexMethod = ResponseIndexServiceGrpc.getSearchIndexMethod) == null) {
      synchronized (ResponseIndexServiceGrpc.class) {
        if ((getSearchIndexMethod = ResponseIndexServiceGrpc.getSearchIndexMethod) == null) {
          ResponseIndexServiceGrpc.getSearchIndexMethod = getSearchIndexMethod =
              io.grpc.MethodDescriptor.<dev.agentflux.v1.SearchIndexRequest, dev.agentflux.v1.SearchIndexResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "SearchIndex"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.agentflux.v1.SearchIndexRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.agentflux.v1.SearchIndexResponse.getDefaultInstance()))
              .setSchemaDescriptor(new ResponseIndexServiceMethodDescriptorSupplier("SearchIndex"))
              .build();
        }
      }
    }
    return getSearchIndexMethod;
  }

  /**
   * Creates a new async stub that supports all call types for the service
   */
  public static ResponseIndexServiceStub newStub(io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<ResponseIndexServiceStub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<ResponseIndexServiceStub>() {
        @java.lang.Override
        public ResponseIndexServiceStub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new ResponseIndexServiceStub(channel, callOptions);
        }
      };
    return ResponseIndexServiceStub.newStub(factory, channel);
  }

  /**
   * Creates a new blocking-style stub that supports all types of calls on the service
   */
  public static ResponseIndexServiceBlockingV2Stub newBlockingV2Stub(
      io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<ResponseIndexServiceBlockingV2Stub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<ResponseIndexServiceBlockingV2Stub>() {
        @java.lang.Override
        public ResponseIndexServiceBlockingV2Stub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new ResponseIndexServiceBlockingV2Stub(channel, callOptions);
        }
      };
    return ResponseIndexServiceBlockingV2Stub.newStub(factory, channel);
  }

  /**
   * Creates a new blocking-style stub that supports unary and streaming output calls on the service
   */
  public static ResponseIndexServiceBlockingStub newBlockingStub(
      io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<ResponseIndexServiceBlockingStub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<ResponseIndexServiceBlockingStub>() {
        @java.lang.Override
        public ResponseIndexServiceBlockingStub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new ResponseIndexServiceBlockingStub(channel, callOptions);
        }
      };
    return ResponseIndexServiceBlockingStub.newStub(factory, channel);
  }

  /**
   * Creates a new ListenableFuture-style stub that supports unary calls on the service
   */
  public static ResponseIndexServiceFutureStub newFutureStub(
      io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<ResponseIndexServiceFutureStub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<ResponseIndexServiceFutureStub>() {
        @java.lang.Override
        public ResponseIndexServiceFutureStub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new ResponseIndexServiceFutureStub(channel, callOptions);
        }
      };
    return ResponseIndexServiceFutureStub.newStub(factory, channel);
  }

  /**
   * <pre>
   * The retrieval index of finished answers, kept by the indexer as a projection of
   * `agent.completed`: every indexer replica builds the whole index, so any replica
   * answers. The gateway's `SearchResponses` and the `retrieve` tool query it.
   * </pre>
   */
  public interface AsyncService {

    /**
     * <pre>
     * Searches one tenant's indexed answers, best first.
     * </pre>
     */
    default void searchIndex(dev.agentflux.v1.SearchIndexRequest request,
        io.grpc.stub.StreamObserver<dev.agentflux.v1.SearchIndexResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getSearchIndexMethod(), responseObserver);
    }
  }

  /**
   * Base class for the server implementation of the service ResponseIndexService.
   * <pre>
   * The retrieval index of finished answers, kept by the indexer as a projection of
   * `agent.completed`: every indexer replica builds the whole index, so any replica
   * answers. The gateway's `SearchResponses` and the `retrieve` tool query it.
   * </pre>
   */
  public static abstract class ResponseIndexServiceImplBase
      implements io.grpc.BindableService, AsyncService {

    @java.lang.Override public final io.grpc.ServerServiceDefinition bindService() {
      return ResponseIndexServiceGrpc.bindService(this);
    }
  }

  /**
   * A stub to allow clients to do asynchronous rpc calls to service ResponseIndexService.
   * <pre>
   * The retrieval index of finished answers, kept by the indexer as a projection of
   * `agent.completed`: every indexer replica builds the whole index, so any replica
   * answers. The gateway's `SearchResponses` and the `retrieve` tool query it.
   * </pre>
   */
  public static final class ResponseIndexServiceStub
      extends io.grpc.stub.AbstractAsyncStub<ResponseIndexServiceStub> {
    private ResponseIndexServiceStub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected ResponseIndexServiceStub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new ResponseIndexServiceStub(channel, callOptions);
    }

    /**
     * <pre>
     * Searches one tenant's indexed answers, best first.
     * </pre>
     */
    public void searchIndex(dev.agentflux.v1.SearchIndexRequest request,
        io.grpc.stub.StreamObserver<dev.agentflux.v1.SearchIndexResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getSearchIndexMethod(), getCallOptions()), request, responseObserver);
    }
  }

  /**
   * A stub to allow clients to do synchronous rpc calls to service ResponseIndexService.
   * <pre>
   * The retrieval index of finished answers, kept by the indexer as a projection of
   * `agent.completed`: every indexer replica builds the whole index, so any replica
   * answers. The gateway's `SearchResponses` and the `retrieve` tool query it.
   * </pre>
   */
  public static final class ResponseIndexServiceBlockingV2Stub
      extends io.grpc.stub.AbstractBlockingStub<ResponseIndexServiceBlockingV2Stub> {
    private ResponseIndexServiceBlockingV2Stub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected ResponseIndexServiceBlockingV2Stub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new ResponseIndexServiceBlockingV2Stub(channel, callOptions);
    }

    /**
     * <pre>
     * Searches one tenant's indexed answers, best first.
     * </pre>
     */
    public dev.agentflux.v1.SearchIndexResponse searchIndex(dev.agentflux.v1.SearchIndexRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getSearchIndexMethod(), getCallOptions(), request);
    }
  }

  /**
   * A stub to allow clients to do limited synchronous rpc calls to service ResponseIndexService.
   * <pre>
   * The retrieval index of finished answers, kept by the indexer as a projection of
   * `agent.completed`: every indexer replica builds the whole index, so any replica
   * answers. The gateway's `SearchResponses` and the `retrieve` tool query it.
   * </pre>
   */
  public static final class ResponseIndexServiceBlockingStub
      extends io.grpc.stub.AbstractBlockingStub<ResponseIndexServiceBlockingStub> {
    private ResponseIndexServiceBlockingStub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected ResponseIndexServiceBlockingStub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new ResponseIndexServiceBlockingStub(channel, callOptions);
    }

    /**
     * <pre>
     * Searches one tenant's indexed answers, best first.
     * </pre>
     */
    public dev.agentflux.v1.SearchIndexResponse searchIndex(dev.agentflux.v1.SearchIndexRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getSearchIndexMethod(), getCallOptions(), request);
    }
  }

  /**
   * A stub to allow clients to do ListenableFuture-style rpc calls to service ResponseIndexService.
   * <pre>
   * The retrieval index of finished answers, kept by the indexer as a projection of
   * `agent.completed`: every indexer replica builds the whole index, so any replica
   * answers. The gateway's `SearchResponses` and the `retrieve` tool query it.
   * </pre>
   */
  public static final class ResponseIndexServiceFutureStub
      extends io.grpc.stub.AbstractFutureStub<ResponseIndexServiceFutureStub> {
    private ResponseIndexServiceFutureStub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected ResponseIndexServiceFutureStub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new ResponseIndexServiceFutureStub(channel, callOptions);
    }

    /**
     * <pre>
     * Searches one tenant's indexed answers, best first.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<dev.agentflux.v1.SearchIndexResponse> searchIndex(
        dev.agentflux.v1.SearchIndexRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getSearchIndexMethod(), getCallOptions()), request);
    }
  }

  private static final int METHODID_SEARCH_INDEX = 0;

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
        case METHODID_SEARCH_INDEX:
          serviceImpl.searchIndex((dev.agentflux.v1.SearchIndexRequest) request,
              (io.grpc.stub.StreamObserver<dev.agentflux.v1.SearchIndexResponse>) responseObserver);
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
          getSearchIndexMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              dev.agentflux.v1.SearchIndexRequest,
              dev.agentflux.v1.SearchIndexResponse>(
                service, METHODID_SEARCH_INDEX)))
        .build();
  }

  private static abstract class ResponseIndexServiceBaseDescriptorSupplier
      implements io.grpc.protobuf.ProtoFileDescriptorSupplier, io.grpc.protobuf.ProtoServiceDescriptorSupplier {
    ResponseIndexServiceBaseDescriptorSupplier() {}

    @java.lang.Override
    public com.google.protobuf.Descriptors.FileDescriptor getFileDescriptor() {
      return dev.agentflux.v1.IndexProto.getDescriptor();
    }

    @java.lang.Override
    public com.google.protobuf.Descriptors.ServiceDescriptor getServiceDescriptor() {
      return getFileDescriptor().findServiceByName("ResponseIndexService");
    }
  }

  private static final class ResponseIndexServiceFileDescriptorSupplier
      extends ResponseIndexServiceBaseDescriptorSupplier {
    ResponseIndexServiceFileDescriptorSupplier() {}
  }

  private static final class ResponseIndexServiceMethodDescriptorSupplier
      extends ResponseIndexServiceBaseDescriptorSupplier
      implements io.grpc.protobuf.ProtoMethodDescriptorSupplier {
    private final java.lang.String methodName;

    ResponseIndexServiceMethodDescriptorSupplier(java.lang.String methodName) {
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
      synchronized (ResponseIndexServiceGrpc.class) {
        result = serviceDescriptor;
        if (result == null) {
          serviceDescriptor = result = io.grpc.ServiceDescriptor.newBuilder(SERVICE_NAME)
              .setSchemaDescriptor(new ResponseIndexServiceFileDescriptorSupplier())
              .addMethod(getSearchIndexMethod())
              .build();
        }
      }
    }
    return result;
  }
}
