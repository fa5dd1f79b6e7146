// One runner of Effect's side of benches/cluster.py: a socket runner of Effect 4's cluster
// (NodeClusterSocket, its SQL message and runner storage on PostgreSQL) that serves the counter
// entity and sends its share of the requests. Started by cluster.ts (child_process.fork, with
// an IPC channel); never run by hand.
//
//   node --import tsx runner.ts '<json config>'
//
// config: { pgUrl, port, index, runners, requests, inFlight, entities }
//
// Over IPC it sends {type: "view", shards} every 100 ms (how many of the 300 shards it holds),
// waits for {type: "go"}, sends the requests n with n % runners == index (persisted, a unique
// primary key each, to entity n % entities), inFlight at a time, then sends
// {type: "done", began, ended, replies} (epoch seconds). On {type: "stop"} it exits at once:
// the measurement is over, the cluster's graceful shutdown (up to 15 s) is not waited for.
import { NodeClusterSocket } from "@effect/platform-node"
import { PgClient } from "@effect/sql-pg"
import { Effect, Layer, Option, Redacted, Ref, References, Schema } from "effect"
import { ClusterSchema, Entity, RunnerAddress, Sharding, ShardId } from "effect/cluster"
import { Rpc } from "effect/rpc"

interface Config {
  readonly pgUrl: string
  readonly port: number
  readonly index: number
  readonly runners: number
  readonly requests: number
  readonly inFlight: number
  readonly entities: number
}

const config: Config = JSON.parse(process.argv[2] ?? "{}")
const SHARDS = 300

// The persisted RPC: saved before it runs, deduplicated by its primary key (unique per request),
// its reply saved. The same counter as plait's BenchClusterCounter.add.
const Add = Rpc.make("Add", {
  payload: { key: Schema.String, by: Schema.Int },
  success: Schema.Int,
  primaryKey: ({ key }) => key
}).annotate(ClusterSchema.Persisted, true)

const Counter = Entity.make("BenchClusterCounter", [Add])

// The count lives in memory while the instance is resident; the idle time is raised from the
// one-minute default so no instance is passivated during a run.
const CounterLayer = Counter.toLayer(
  Effect.gen(function*() {
    const total = yield* Ref.make(0)
    return Counter.of({
      Add: ({ payload }) => Ref.updateAndGet(total, (n) => n + payload.by)
    })
  }),
  { maxIdleTime: "10 minutes" }
)

const clusterLayer = NodeClusterSocket.layer({
  storage: "sql",
  shardingConfig: {
    shardsPerGroup: SHARDS,
    runnerAddress: Option.some(RunnerAddress.make("127.0.0.1", config.port)),
    // As plait's runners in benches/cluster_runner.py: the ring is re-read every 0.5 s.
    refreshAssignmentsInterval: "500 millis"
  }
}).pipe(
  Layer.provideMerge(PgClient.layer({ url: Redacted.make(config.pgUrl), maxConnections: 10 }))
)

const send = (message: object) =>
  new Promise<void>((resolve, reject) =>
    process.send!(message, undefined, {}, (err) => (err ? reject(err) : resolve()))
  )

let go: () => void = () => {}
const started = new Promise<void>((resolve) => {
  go = resolve
})
process.on("message", (message: { type?: string }) => {
  if (message.type === "go") go()
  if (message.type === "stop") process.exit(0)
})
// The bench is gone: nothing to report to.
process.on("disconnect", () => process.exit(0))

const now = () => (performance.timeOrigin + performance.now()) / 1000

const program = Effect.gen(function*() {
  const sharding = yield* Sharding.Sharding
  const clientFor = yield* Counter.client
  const shardIds = Array.from({ length: SHARDS }, (_, i) => ShardId.make("default", i + 1))
  const publish = () => {
    const shards = shardIds.filter((id) => sharding.hasShardId(id)).length
    process.send!({ type: "view", shards })
  }
  publish()
  const timer = setInterval(publish, 100)
  yield* Effect.promise(() => started)
  clearInterval(timer)

  const mine: Array<number> = []
  for (let n = config.index; n < config.requests; n += config.runners) mine.push(n)
  let replies = 0
  const began = now()
  yield* Effect.forEach(
    mine,
    (n) =>
      clientFor(`c-${n % config.entities}`).Add({ key: `r${n}`, by: 1 }).pipe(
        Effect.flatMap((total) =>
          total >= 1
            ? Effect.sync(() => {
              replies++
            })
            : Effect.die(`request ${n}: total ${total}`)
        )
      ),
    { concurrency: config.inFlight, discard: true }
  )
  const ended = now()
  yield* Effect.promise(() => send({ type: "done", began, ended, replies }))
  // Serves the other runners' requests until the bench says stop.
  yield* Effect.never
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
