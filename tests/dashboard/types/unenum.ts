// Grafana's generated types use TypeScript enums for fields whose JSON value is a plain string
// (FieldColorModeId, GraphDrawStyle, ...). A string literal is not assignable to a TypeScript string
// enum, although the JSON holds exactly the enum's value. Unenum<T> maps every string enum in T to
// the union of its values (`${E}`), recursively, and changes nothing else: numbers, booleans,
// plain strings, optional and required keys stay as they are, so excess properties are still
// reported. Numeric enums need no mapping (a number literal of a member is assignable).
export type Unenum<T> = T extends string
  ? `${T}`
  : T extends number | boolean | bigint | symbol | null | undefined
    ? T
    : T extends ReadonlyArray<infer U>
      ? Array<Unenum<U>>
      : T extends object
        ? { [K in keyof T]: Unenum<T[K]> }
        : T;
