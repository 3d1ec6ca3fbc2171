// Types of steward-worker.

export declare class NotUnderSteward extends Error {}

/** Throw in a handler to fail the job; `{ retry: false }` fails it at once. */
export declare class Fail extends Error {
  constructor(message: string, options?: { retry?: boolean });
  retry: boolean;
}

/** Thrown by `job.throwIfCancelled()` once steward has cancelled the job. */
export declare class Cancelled extends Error {}

export declare class SubmitError extends Error {}

export interface SubmitOptions {
  priority?: number;
  delayMs?: number;
  maxAttempts?: number;
  timeoutMs?: number;
  key?: string;
  /** Default: STEWARD_SOCKET. */
  socketPath?: string;
  requestTimeoutMs?: number;
}

export declare class Job<P = unknown> {
  readonly id: number;
  readonly queue: string;
  /** Which start this is (1 for the first; interruptions count too). */
  readonly attempt: number;
  readonly payload: P;
  /** When the attempt times out (RFC 3339), or null. */
  readonly deadline: string | null;
  /** Aborted when steward cancels the job. */
  readonly signal: AbortSignal;
  readonly cancelled: boolean;
  throwIfCancelled(): void;
  /** A fraction from 0 to 1 and/or a short message. */
  progress(fraction?: number | null, message?: string | null): Promise<void>;
  submit(queue: string, payload?: unknown, options?: SubmitOptions): Promise<number>;
}

export type Handler<P = any, R = unknown> = (job: Job<P>) => R | Promise<R>;

export interface WorkerOptions {
  /** Default: STEWARD_CONCURRENCY (the pool's concurrency). */
  concurrency?: number;
  /** Default: STEWARD_HEARTBEAT_MS (a third of the shortest lease). */
  heartbeatMs?: number;
  /** Exit the process with 0 once drained (default true). */
  exitOnDrain?: boolean;
}

export declare class Worker {
  constructor(options?: WorkerOptions);
  readonly pool: string;
  readonly instance: number;
  readonly concurrency: number;
  handle<P = any, R = unknown>(queue: string, fn: Handler<P, R>): this;
  handle<P = any, R = unknown>(fn: Handler<P, R>): this;
  run(): Promise<void>;
}

export declare function submit(queue: string, payload?: unknown, options?: SubmitOptions): Promise<number>;
