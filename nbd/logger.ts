/** One log method: structured fields and a message, or a message alone (as pino takes them). */
export interface LogFn {
  (obj: object, msg?: string): void;
  (msg: string): void;
}

/** The logging surface the NBD layer needs; a pino logger satisfies it. */
export interface Logger {
  debug: LogFn;
  info: LogFn;
  warn: LogFn;
  error: LogFn;
}

const ignore: LogFn = () => undefined;

export const silentLogger: Logger = { debug: ignore, info: ignore, warn: ignore, error: ignore };
