// Shared by backend.mjs and the soak run (tests/e2e/soak/run.mjs).

/**
 * google.protobuf.Value from plain JSON: proto-loader has no conversion of its own. The
 * well-known types come from protobufjs with camelCase field names, even with keepCase.
 */
export function toValue(json) {
  if (json === null) return { nullValue: "NULL_VALUE" };
  if (Array.isArray(json)) return { listValue: { values: json.map(toValue) } };
  switch (typeof json) {
    case "number":
      return { numberValue: json };
    case "string":
      return { stringValue: json };
    case "boolean":
      return { boolValue: json };
    default:
      return { structValue: { fields: Object.fromEntries(Object.entries(json).map(([k, v]) => [k, toValue(v)])) } };
  }
}
