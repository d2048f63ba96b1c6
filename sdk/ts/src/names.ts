import { RunStatusSchema, StreamRunResponseSchema } from "@agentflux/contracts";
import type { RunStatus, StreamRunResponse } from "@agentflux/contracts";

/** The proto name of a run status: `RUN_STATUS_COMPLETED`. */
export function runStatusName(status: RunStatus): string {
  return RunStatusSchema.value[status]?.name ?? String(status);
}

/** The proto name of the event an event carries: `tool_started`, `finished`, ... */
export function eventKind(event: StreamRunResponse): string {
  const kind = event.event.case;
  if (kind === undefined) return "unknown";
  return StreamRunResponseSchema.field[kind]?.name ?? kind;
}
