import { randomUUID } from "node:crypto";

import { AgentGateway } from "@agentflux/contracts";
import type { Run, StreamRunResponse } from "@agentflux/contracts";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import type { Client, Interceptor } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";

/** Certificates for a TLS connection to the gateway (PEM). */
export interface TlsOptions {
  /** CA certificate(s) to trust instead of the system's. */
  ca?: string | Buffer;
  /** Client certificate, for a gateway that requires one. */
  cert?: string | Buffer;
  /** Key of the client certificate. */
  key?: string | Buffer;
  /** Server name to verify, when it differs from the target's host. */
  serverName?: string;
}

export interface ClientOptions {
  /**
   * The gateway: `host:port` (plaintext unless `tls` is given), `http://host:port`, or
   * `https://host:port` (TLS).
   */
  target: string;
  /** API key, sent as `authorization: Bearer <key>`; none for a deployment without credentials. */
  apiKey?: string;
  /** TLS: `true` for the system's CAs, or the certificates to use. */
  tls?: boolean | TlsOptions;
  /** Deadline of each unary call, in milliseconds (default 30 s). Streams have none. */
  timeoutMs?: number;
  /** How many times in a row a broken stream is resumed before its error is thrown (default 5). */
  maxStreamRetries?: number;
  /** First pause before resuming a broken stream, doubled on each further try (default 200 ms). */
  retryBackoffMs?: number;
}

/** Context of a call: what ties it to the request it belongs to. */
export interface CallContext {
  /** `x-correlation-id`: ties everything one request causes together. */
  correlationId?: string;
  /** W3C `traceparent`, to continue a trace. */
  traceparent?: string;
  /** Aborts the call. */
  signal?: AbortSignal;
}

export interface SubmitOptions extends CallContext {
  /** Conversation the run continues; a new one when absent. */
  conversationId?: string;
  /**
   * `idempotency-key`: a retried submit with the same key returns the same run. A new
   * one is made when absent (and returned), so the client's own retries are safe.
   */
  idempotencyKey?: string;
}

export interface Submitted {
  /** The run started (or found again, for a key seen before). */
  run: Run;
  /** `x-correlation-id` the gateway echoed in its response headers ("" when absent). */
  correlationId: string;
  /** `x-request-id` the gateway echoed in its response headers ("" when absent). */
  requestId: string;
  /** The `idempotency-key` sent. */
  idempotencyKey: string;
}

export interface StreamOptions extends CallContext {
  /** Resume after this sequence (0, the default: from the first event). */
  afterSequence?: bigint | number;
  /** Called before each resume, with the sequence it resumes after and the error that broke the stream. */
  onResume?: (afterSequence: bigint, cause: ConnectError) => void;
}

/** Stream breaks worth resuming: the connection went away, or the server reset the stream. */
const RESUMABLE = new Set<Code>([Code.Unavailable, Code.Internal]);

/** How long a stream may stay open after `finished` before it is reset. */
const LINGER_MS = 5_000;

/** A new id in the gateway's id format (a letter or digit first). */
export function newId(): string {
  return randomUUID();
}

/** The gRPC name of a status code, as other gRPC libraries print it: `INVALID_ARGUMENT`. */
export function codeName(code: Code): string {
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

function contextHeaders(ctx: CallContext): Headers {
  const headers = new Headers();
  if (ctx.correlationId) headers.set("x-correlation-id", ctx.correlationId);
  if (ctx.traceparent) headers.set("traceparent", ctx.traceparent);
  return headers;
}

function baseUrl(target: string, tls: ClientOptions["tls"]): string {
  if (/^https?:\/\//.test(target)) return target;
  return `${tls ? "https" : "http"}://${target}`;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(ConnectError.from(signal.reason, Code.Canceled));
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(ConnectError.from(signal?.reason, Code.Canceled));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * A client of the agentflux gateway over gRPC (HTTP/2). One client holds one
 * connection, opened on the first call; `close()` drops it.
 */
export class AgentfluxClient {
  /** The generated Connect client, for the calls this class does not wrap. */
  readonly rpc: Client<typeof AgentGateway>;
  private readonly session: Http2SessionManager;
  private readonly timeoutMs: number;
  private readonly maxStreamRetries: number;
  private readonly retryBackoffMs: number;

  constructor(options: ClientOptions) {
    const url = baseUrl(options.target, options.tls);
    const tls = typeof options.tls === "object" ? options.tls : {};
    const nodeOptions = url.startsWith("https:")
      ? { ca: tls.ca, cert: tls.cert, key: tls.key, servername: tls.serverName }
      : {};
    this.session = new Http2SessionManager(url, {}, nodeOptions);
    const interceptors: Interceptor[] = [];
    const key = options.apiKey;
    if (key) {
      interceptors.push((next) => (req) => {
        req.header.set("authorization", `Bearer ${key}`);
        return next(req);
      });
    }
    const transport = createGrpcTransport({
      baseUrl: url,
      sessionManager: this.session,
      interceptors,
    });
    this.rpc = createClient(AgentGateway, transport);
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.maxStreamRetries = options.maxStreamRetries ?? 5;
    this.retryBackoffMs = options.retryBackoffMs ?? 200;
  }

  /**
   * Starts a run. Sends `x-correlation-id` and `idempotency-key` (each made when not
   * given) and returns the run with what the gateway echoed.
   */
  async submit(prompt: string, options: SubmitOptions = {}): Promise<Submitted> {
    const correlationId = options.correlationId || newId();
    const idempotencyKey = options.idempotencyKey || newId();
    const headers = contextHeaders({ ...options, correlationId });
    headers.set("idempotency-key", idempotencyKey);
    let echoed = new Headers();
    const response = await this.rpc.submit(
      { prompt, conversationId: options.conversationId ?? "" },
      {
        headers,
        signal: options.signal,
        timeoutMs: this.timeoutMs,
        onHeader: (h) => {
          echoed = h;
        },
      },
    );
    if (!response.run) throw new ConnectError("the gateway returned no run", Code.Internal);
    return {
      run: response.run,
      correlationId: echoed.get("x-correlation-id") ?? "",
      requestId: echoed.get("x-request-id") ?? "",
      idempotencyKey,
    };
  }

  /**
   * The run's events, from the first (or after `afterSequence`) to `finished`. A stream
   * that breaks is resumed after the last event delivered, so every event comes once.
   */
  stream(runId: string, options: StreamOptions = {}): RunStream {
    return new RunStream(this.rpc, runId, options, this.maxStreamRetries, this.retryBackoffMs);
  }

  /** The run as it is now. */
  async getRun(runId: string, ctx: CallContext = {}): Promise<Run> {
    const response = await this.rpc.getRun(
      { runId },
      { headers: contextHeaders(ctx), signal: ctx.signal, timeoutMs: this.timeoutMs },
    );
    if (!response.run) throw new ConnectError("the gateway returned no run", Code.Internal);
    return response.run;
  }

  /**
   * Cancels the run; returns once none of its tools runs any more, with the run
   * (`RUN_STATUS_CANCELLING`, or `RUN_STATUS_CANCELLED` once every hop acknowledged).
   */
  async cancelRun(runId: string, reason = "", ctx: CallContext = {}): Promise<Run> {
    const response = await this.rpc.cancelRun(
      { runId, reason },
      { headers: contextHeaders(ctx), signal: ctx.signal, timeoutMs: this.timeoutMs },
    );
    if (!response.run) throw new ConnectError("the gateway returned no run", Code.Internal);
    return response.run;
  }

  /** Drops the connection; calls in flight fail. */
  close(): void {
    this.session.abort();
  }
}

/**
 * The events of one run, as an async iterable (iterate it once). It remembers the last
 * sequence delivered and, when the stream breaks (UNAVAILABLE or INTERNAL, or the
 * stream ends before `finished`), opens a new StreamRun after it, up to
 * `maxStreamRetries` times in a row without an event in between.
 */
export class RunStream implements AsyncIterable<StreamRunResponse> {
  /** Sequence of the last event delivered (0 before the first). */
  lastSequence: bigint;
  /** StreamRun calls opened after the first. */
  resumes = 0;
  private current: AbortController | undefined;
  private dropping = false;
  private started = false;

  constructor(
    private readonly rpc: Client<typeof AgentGateway>,
    readonly runId: string,
    private readonly options: StreamOptions,
    private readonly maxRetries: number,
    private readonly backoffMs: number,
  ) {
    this.lastSequence = BigInt(options.afterSequence ?? 0);
  }

  /**
   * Closes the current StreamRun call (its HTTP/2 stream is reset) and goes on with a
   * new one after the last event delivered: what a dropped connection does, on purpose.
   */
  disconnect(): void {
    if (!this.current) return;
    this.dropping = true;
    this.current.abort(new ConnectError("disconnected by the client", Code.Canceled));
  }

  async *[Symbol.asyncIterator](): AsyncIterator<StreamRunResponse> {
    if (this.started) throw new Error("a RunStream is iterated once; call stream() again");
    this.started = true;
    const outer = this.options.signal;
    let failures = 0;
    for (;;) {
      const call = new AbortController();
      const forward = () => call.abort(outer?.reason);
      outer?.addEventListener("abort", forward, { once: true });
      this.current = call;
      this.dropping = false;
      let broken: ConnectError;
      let finished = false;
      let linger: NodeJS.Timeout | undefined;
      try {
        const events = this.rpc.streamRun(
          { runId: this.runId, afterSequence: this.lastSequence },
          { headers: contextHeaders(this.options), signal: call.signal },
        );
        for await (const event of events) {
          // A server that replays what was delivered already must not deliver it twice.
          if (finished || (event.sequence !== 0n && event.sequence <= this.lastSequence)) continue;
          if (event.sequence !== 0n) this.lastSequence = event.sequence;
          failures = 0;
          yield event;
          if (event.event.case === "finished") {
            // Read on to the server's status instead of resetting the stream, so the call
            // ends as a success on both sides; a server that lingers is cut off.
            finished = true;
            linger = setTimeout(() => call.abort(), LINGER_MS);
          }
        }
        if (finished) return;
        broken = new ConnectError("the stream ended before the run finished", Code.Unavailable);
      } catch (err) {
        if (finished) return;
        if (outer?.aborted) throw ConnectError.from(err, Code.Canceled);
        broken = ConnectError.from(err);
        if (!this.dropping && !RESUMABLE.has(broken.code)) throw broken;
      } finally {
        clearTimeout(linger);
        outer?.removeEventListener("abort", forward);
        this.current = undefined;
        // Leaving early (a `break` in the caller's loop) resets the HTTP/2 stream too.
        call.abort();
      }
      if (!this.dropping) {
        failures += 1;
        if (failures > this.maxRetries) throw broken;
        await sleep(this.backoffMs * 2 ** (failures - 1), outer);
      }
      this.resumes += 1;
      this.options.onResume?.(this.lastSequence, broken);
    }
  }
}

/** A client of the gateway at `target`, presenting `apiKey`. */
export function createAgentfluxClient(options: ClientOptions): AgentfluxClient {
  return new AgentfluxClient(options);
}
