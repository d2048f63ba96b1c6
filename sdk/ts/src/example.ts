// The agentflux example program: submits a prompt, follows its run (resuming a dropped
// stream), optionally cancels it, and prints one JSON object per line.
import { parseArgs } from "node:util";

import { ConnectError } from "@connectrpc/connect";

import { AgentfluxClient, codeName, eventKind, runStatusName } from "./index.js";
import type { Run, StreamRunResponse } from "@agentflux/contracts";

const USAGE = `usage:
  example --target HOST:PORT --api-key KEY run --prompt TEXT [--conversation ID]
          [--correlation-id ID] [--idempotency-key KEY] [--disconnect-after N]
  example --target HOST:PORT --api-key KEY cancel --prompt TEXT [--correlation-id ID]
--target and --api-key default to $AGENTFLUX_TARGET and $AGENTFLUX_API_KEY.`;

class UsageError extends Error {}

function emit(line: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

function emitEvent(event: StreamRunResponse): void {
  emit({ op: "event", sequence: Number(event.sequence), kind: eventKind(event) });
}

function emitRun(run: Run): void {
  emit({
    op: "run",
    run_id: run.runId,
    status: runStatusName(run.status),
    answer: run.answer?.text ?? "",
    error: run.errorMessage,
  });
}

interface Args {
  command: "run" | "cancel";
  target: string;
  apiKey: string;
  prompt: string;
  conversation?: string;
  correlationId?: string;
  idempotencyKey?: string;
  disconnectAfter: number;
}

function parse(argv: string[]): Args {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        target: { type: "string" },
        "api-key": { type: "string" },
        prompt: { type: "string" },
        conversation: { type: "string" },
        "correlation-id": { type: "string" },
        "idempotency-key": { type: "string" },
        "disconnect-after": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  const [command, ...rest] = positionals;
  if (command !== "run" && command !== "cancel") {
    throw new UsageError(command ? `unknown command ${command}` : "name a command: run or cancel");
  }
  if (rest.length) throw new UsageError(`unexpected argument ${rest[0]}`);
  if (command === "cancel") {
    for (const flag of ["conversation", "idempotency-key", "disconnect-after"] as const) {
      if (values[flag] !== undefined) throw new UsageError(`cancel takes no --${flag}`);
    }
  }
  const target = values.target ?? process.env.AGENTFLUX_TARGET ?? "";
  if (!target) throw new UsageError("name the gateway: --target HOST:PORT or $AGENTFLUX_TARGET");
  if (!values.prompt) throw new UsageError("--prompt is required");
  const after = values["disconnect-after"] ?? "0";
  if (!/^\d+$/.test(after)) throw new UsageError("--disconnect-after takes a number of events");
  return {
    command,
    target,
    apiKey: values["api-key"] ?? process.env.AGENTFLUX_API_KEY ?? "",
    prompt: values.prompt,
    conversation: values.conversation,
    correlationId: values["correlation-id"],
    idempotencyKey: values["idempotency-key"],
    disconnectAfter: Number(after),
  };
}

async function run(client: AgentfluxClient, args: Args): Promise<void> {
  const submitted = await submit(client, args);
  const runId = submitted.run.runId;
  const stream = client.stream(runId, { correlationId: submitted.correlationId });
  let seen = 0;
  for await (const event of stream) {
    emitEvent(event);
    seen += 1;
    if (seen === args.disconnectAfter && event.event.case !== "finished") {
      // The stream call goes away for real; the iteration goes on with a new StreamRun
      // after the last sequence seen.
      stream.disconnect();
      emit({ op: "disconnected", after_sequence: Number(stream.lastSequence) });
    }
  }
  emitRun(await client.getRun(runId, { correlationId: submitted.correlationId }));
}

async function cancel(client: AgentfluxClient, args: Args): Promise<void> {
  const submitted = await submit(client, args);
  const runId = submitted.run.runId;
  const ctx = { correlationId: submitted.correlationId };
  const first = client.stream(runId, ctx);
  let toolRunning = false;
  for await (const event of first) {
    emitEvent(event);
    if (event.event.case === "toolStarted") {
      toolRunning = true;
      break;
    }
  }
  if (!toolRunning) throw new Error("the run finished before any tool started");
  const cancelled = await client.cancelRun(runId, "cancelled by the example", ctx);
  emit({ op: "cancelled", status: runStatusName(cancelled.status) });
  for await (const event of client.stream(runId, { ...ctx, afterSequence: first.lastSequence })) {
    emitEvent(event);
  }
  emitRun(await client.getRun(runId, ctx));
}

async function submit(client: AgentfluxClient, args: Args) {
  const submitted = await client.submit(args.prompt, {
    conversationId: args.conversation,
    correlationId: args.correlationId,
    idempotencyKey: args.idempotencyKey,
  });
  emit({
    op: "submitted",
    run_id: submitted.run.runId,
    correlation_id: submitted.correlationId,
    request_id: submitted.requestId,
    idempotency_key: submitted.idempotencyKey,
  });
  return submitted;
}

async function main(): Promise<number> {
  let args: Args;
  try {
    args = parse(process.argv.slice(2));
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`error: ${err.message}\n${USAGE}\n`);
    return 2;
  }
  const client = new AgentfluxClient({ target: args.target, apiKey: args.apiKey });
  try {
    await (args.command === "run" ? run(client, args) : cancel(client, args));
    return 0;
  } catch (err) {
    if (err instanceof ConnectError) {
      process.stderr.write(`error: ${codeName(err.code)}: ${err.rawMessage}\n`);
    } else {
      process.stderr.write(`error: ${err instanceof Error ? err.message : String(err)}\n`);
    }
    return 1;
  } finally {
    client.close();
  }
}

process.exitCode = await main();
