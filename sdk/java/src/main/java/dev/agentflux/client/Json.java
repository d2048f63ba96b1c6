package dev.agentflux.client;

/** One flat JSON object per line, for the example's output; no library needed for that much. */
final class Json {
  private Json() {}

  /**
   * A JSON object of the given keys and values, in order: {@code object("op", "event",
   * "sequence", 3)}. Numbers stay numbers; anything else is written as a string (null as "").
   */
  static String object(Object... keysAndValues) {
    if (keysAndValues.length % 2 != 0) {
      throw new IllegalArgumentException("keys and values must pair up");
    }
    StringBuilder out = new StringBuilder("{");
    for (int i = 0; i < keysAndValues.length; i += 2) {
      if (i > 0) {
        out.append(',');
      }
      string(out, String.valueOf(keysAndValues[i]));
      out.append(':');
      Object value = keysAndValues[i + 1];
      if (value instanceof Long || value instanceof Integer) {
        out.append(value);
      } else {
        string(out, value == null ? "" : value.toString());
      }
    }
    return out.append('}').toString();
  }

  // Everything outside printable ASCII is escaped, so the output is the same whatever the
  // platform's default charset is.
  private static void string(StringBuilder out, String s) {
    out.append('"');
    for (int i = 0; i < s.length(); i++) {
      char c = s.charAt(i);
      switch (c) {
        case '"' -> out.append("\\\"");
        case '\\' -> out.append("\\\\");
        case '\n' -> out.append("\\n");
        case '\r' -> out.append("\\r");
        case '\t' -> out.append("\\t");
        case '\b' -> out.append("\\b");
        case '\f' -> out.append("\\f");
        default -> {
          if (c < 0x20 || c > 0x7e) {
            out.append(String.format("\\u%04x", (int) c));
          } else {
            out.append(c);
          }
        }
      }
    }
    out.append('"');
  }
}
