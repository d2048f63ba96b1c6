export {
  AgentfluxClient,
  RunStream,
  codeName,
  createAgentfluxClient,
  newId,
} from "./client.js";
export type {
  CallContext,
  ClientOptions,
  StreamOptions,
  SubmitOptions,
  Submitted,
  TlsOptions,
} from "./client.js";
export { eventKind, runStatusName } from "./names.js";
