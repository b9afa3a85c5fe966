import { pino, type Logger } from "pino";

export type { Logger };

/** JSON on stderr; human-readable when stderr is a terminal. */
export function createLogger(level = "info"): Logger {
  if (process.stderr.isTTY) {
    return pino({
      level,
      transport: {
        target: "pino-pretty",
        options: { destination: 2, translateTime: "SYS:HH:MM:ss.l" },
      },
    });
  }
  return pino({ level }, pino.destination({ dest: 2, sync: true }));
}
