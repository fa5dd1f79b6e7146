// Effect's side of plait's entity benchmark (benches/entities.py): the same counter entity as
// plait's, on Effect 4's cluster with one runner (SingleRunner) and its SQL message storage on
// PostgreSQL. benches/entities.py installs this folder under /tmp and runs it with node; it is
// never part of plait's own build.
//
//   node --expose-gc --import tsx entities.ts '<json config>'
//
// config: { mode: "persisted" | "volatile" | "idle", pgUrl, prefix, entities, count, inFlight,
//           sequential, warmup, idle }
// Each measurement prints one JSON line {"row": ..., ...}; the last line is {"done": true}.
// The process exits right after it, without waiting for the cluster's graceful shutdown (up to
// 15 s, not part of any measurement).
import * as NodeCrypto from "@effect/platform-node/NodeCrypto"
import { PgClient } from "@effect/sql-pg"
import { Effect, Layer, Redacted, Ref, References, Schema } from "effect"
import { ClusterSchema, Entity, SingleRunner } from "effect/cluster"
import { Rpc } from "effect/rpc"

interface Config {
  readonly mode: "persisted" | "volatile" | "idle"
  readonly pgUrl: string
  readonly prefix: string
  readonly entities: number
  readonly count: number
  readonly inFlight: number
  readonly sequential: number
  readonly warmup: number
  readonly idle: number
}

const config: Config = JSON.parse(process.argv[2] ?? "{}")

// The persisted RPC: stored before it runs, deduplicated by its primary key, its reply stored.
const Increment = Rpc.make("Increment", {
  payload: { key: Schema.String, by: Schema.Int },
  success: Schema.Int,
  primaryKey: ({ key }) => key
}).annotate(ClusterSchema.Persisted, true)

// The volatile RPC: the same counter, never stored.
const Bump = Rpc.make("Bump", {
  payload: { key: Schema.String, by: Schema.Int },
  success: Schema.Int
})

const Counter = Entity.make("BenchCounter", [Increment, Bump])

// Effect's entities keep their state in memory while resident. The idle time is raised from
// the one-minute default so that no counter is passivated (and restarted at zero) during a
// run: the benchmark checks every counter's replies.
const CounterLayer = Counter.toLayer(
  Effect.gen(function*() {
    const count = yield* Ref.make(0)
    return Counter.of({
      Increment: ({ payload }) => Ref.updateAndGet(count, (n) => n + payload.by),
      Bump: ({ payload }) => Ref.updateAndGet(count, (n) => n + payload.by)
    })
  }),
  { maxIdleTime: "10 minutes" }
)

const clusterLayer = SingleRunner.layer({
  runnerStorage: "sql",
  shardingConfig: config.mode === "idle" ? { maxResidentEntities: "unbounded" } : {}
}).pipe(
  Layer.provide(NodeCrypto.layerDigest),
  Layer.provideMerge(PgClient.layer({ url: Redacted.make(config.pgUrl), maxConnections: 10 }))
)

// Written, and flushed before anything goes on: the process exits right after the last line,
// and node writes to a pipe asynchronously.
const emit = (line: object) =>
  Effect.promise(() =>
    new Promise<void>((resolve, reject) =>
      process.stdout.write(JSON.stringify(line) + "\n", (err) => (err ? reject(err) : resolve()))
    )
  )

const entityId = (n: number) => `${config.prefix}-${n % config.entities}`

// Per entity, the replies must be consecutive counts (each increment seen exactly once),
// whatever order the requests of one entity ran in.
const check = (row: string, replies: Map<string, Array<number>>) => {
  for (const [id, values] of replies) {
    values.sort((a, b) => a - b)
    for (let i = 1; i < values.length; i++) {
      if (values[i] !== values[i - 1] + 1) {
        return Effect.die(`${row}: entity ${id} replied ${values.join(",")}`)
      }
    }
  }
  return Effect.void
}

const program = Effect.gen(function*() {
  const clientFor = yield* Counter.client
  let keys = 0
  const call = (rpc: "Increment" | "Bump", id: string) => {
    const payload = { key: `${config.prefix}-k${keys++}`, by: 1 }
    return rpc === "Increment" ? clientFor(id).Increment(payload) : clientFor(id).Bump(payload)
  }

  // One request after another to one warm instance: latency of a single RPC.
  const sequential = (rpc: "Increment" | "Bump", row: string) =>
    Effect.gen(function*() {
      const latencies: Array<number> = []
      const replies: Array<number> = []
      const id = entityId(0)
      const started = performance.now()
      for (let i = 0; i < config.sequential; i++) {
        const began = performance.now()
        replies.push(yield* call(rpc, id))
        latencies.push(performance.now() - began)
      }
      const elapsed = (performance.now() - started) / 1000
      yield* check(row, new Map([[id, replies]]))
      yield* emit({ row, count: config.sequential, elapsed, latencies })
    })

  // `count` requests over `entities` ids, `inFlight` at once (a new one starts as one ends).
  const inFlight = (rpc: "Increment" | "Bump", row: string) =>
    Effect.gen(function*() {
      const latencies: Array<number> = []
      const replies = new Map<string, Array<number>>()
      const started = performance.now()
      yield* Effect.forEach(
        Array.from({ length: config.count }, (_, i) => i),
        (i) =>
          // Suspended: the clock starts when the request starts, not when it is described.
          Effect.suspend(() => {
            const id = entityId(i)
            const began = performance.now()
            return call(rpc, id).pipe(Effect.tap((value) =>
              Effect.sync(() => {
                latencies.push(performance.now() - began)
                const seen = replies.get(id)
                if (seen) seen.push(value)
                else replies.set(id, [value])
              })
            ))
          }),
        { concurrency: config.inFlight, discard: true }
      )
      const elapsed = (performance.now() - started) / 1000
      yield* check(row, replies)
      yield* emit({ row, count: config.count, elapsed, latencies })
    })

  const warm = (rpc: "Increment" | "Bump") =>
    Effect.forEach(
      Array.from({ length: config.warmup }, (_, i) => i),
      (i) => call(rpc, entityId(i)),
      { concurrency: 10, discard: true }
    )

  if (config.mode === "persisted") {
    yield* warm("Increment")
    yield* sequential("Increment", "persisted-sequential")
    yield* inFlight("Increment", "persisted-in-flight")
  } else if (config.mode === "volatile") {
    yield* warm("Bump")
    yield* sequential("Bump", "volatile-sequential")
    yield* inFlight("Bump", "volatile-in-flight")
  } else {
    // Idle resident instances: the heap and RSS growth from making `idle` instances (one
    // volatile request each), after garbage collection.
    const gc = (globalThis as any).gc as (() => void) | undefined
    if (!gc) return yield* Effect.die("run node with --expose-gc")
    yield* warm("Bump")
    const settle = Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 200))).pipe(
      Effect.andThen(Effect.sync(() => {
        gc()
        gc()
      }))
    )
    yield* settle
    const before = process.memoryUsage()
    yield* Effect.forEach(
      Array.from({ length: config.idle }, (_, i) => i),
      (i) => call("Bump", `${config.prefix}-idle-${i}`),
      { concurrency: config.inFlight, discard: true }
    )
    yield* settle
    const after = process.memoryUsage()
    yield* emit({
      row: "idle",
      count: config.idle,
      heapBytes: after.heapUsed - before.heapUsed,
      rssBytes: after.rss - before.rss
    })
  }
  yield* emit({ done: true })
  // Measured and printed: no need to wait for the cluster's graceful shutdown.
  process.exit(0)
})

const main = program.pipe(
  Effect.provide(CounterLayer.pipe(Layer.provideMerge(clusterLayer))),
  Effect.provideService(References.MinimumLogLevel, "Warn")
)

Effect.runPromise(main as any).then(
  () => process.exit(0),
  (err) => {
    console.error(err)
    process.exit(1)
  }
)
