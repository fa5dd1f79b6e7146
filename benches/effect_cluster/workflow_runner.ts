// One runner of Effect's side of benches/cluster_workflows.py: a socket runner of Effect 4's
// cluster (NodeClusterSocket, its SQL message and runner storage on PostgreSQL) with
// ClusterWorkflowEngine on it, which runs each workflow execution as an entity
// (`Workflow/<name>`, keyed by execution id) on the runner holding its shard, and starts its
// share of the workflows. Started by workflow_cluster.ts (child_process.fork, with an IPC
// channel); never run by hand.
//
//   node --import tsx workflow_runner.ts '<json config>'
//
// config: { pgUrl, port, index, runners, workflows, inFlight }
//
// Over IPC it sends {type: "view", shards} every 100 ms (how many of the 300 shards it holds),
// waits for {type: "go"}, executes the workflows n with n % runners == index (three activities,
// x+1, x*2, x-1, the idempotency key n), inFlight at a time, each awaited for its result, which
// it checks, then sends {type: "done", began, ended, results} (epoch seconds). On
// {type: "stop"} it exits at once: the measurement is over, the cluster's graceful shutdown
// (up to 15 s) is not waited for.
import { NodeClusterSocket } from "@effect/platform-node"
import * as NodeCrypto from "@effect/platform-node/NodeCrypto"
import { PgClient } from "@effect/sql-pg"
import { Effect, Layer, Option, Redacted, References, Schema } from "effect"
import { ClusterWorkflowEngine, RunnerAddress, Sharding, ShardId } from "effect/cluster"
import { Activity, Workflow } from "effect/workflow"

interface Config {
  readonly pgUrl: string
  readonly port: number
  readonly index: number
  readonly runners: number
  readonly workflows: number
  readonly inFlight: number
}

const config: Config = JSON.parse(process.argv[2] ?? "{}")
const SHARDS = 300

// The same workflow as plait's BenchClusterThreeSteps: three activities, each one's result
// persisted (a message and a reply in the cluster's SQL storage) before the next runs.
const ThreeSteps = Workflow.make("BenchClusterThreeSteps", {
  payload: { n: Schema.Number },
  success: Schema.Number,
  idempotencyKey: ({ n }) => String(n)
})

const step = (name: string, f: (x: number) => number) => (x: number) =>
  Activity.make({ name, success: Schema.Number, execute: Effect.sync(() => f(x)) })
const addOne = step("bench_cluster_add_one", (x) => x + 1)
const double = step("bench_cluster_double", (x) => x * 2)
const subtractOne = step("bench_cluster_subtract_one", (x) => x - 1)

const ThreeStepsLayer = ThreeSteps.toLayer(({ n }) =>
  addOne(n).pipe(Effect.flatMap(double), Effect.flatMap(subtractOne))
)

const clusterLayer = NodeClusterSocket.layer({
  storage: "sql",
  shardingConfig: {
    shardsPerGroup: SHARDS,
    runnerAddress: Option.some(RunnerAddress.make("127.0.0.1", config.port)),
    // As plait's runners in benches/cluster_workflow_runner.py: the ring is re-read every 0.5 s.
    refreshAssignmentsInterval: "500 millis"
  }
}).pipe(
  Layer.provideMerge(PgClient.layer({ url: Redacted.make(config.pgUrl), maxConnections: 10 }))
)

const engineLayer = ClusterWorkflowEngine.layer.pipe(
  Layer.provideMerge(clusterLayer),
  Layer.provide(NodeCrypto.layerDigest)
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
  for (let n = config.index; n < config.workflows; n += config.runners) mine.push(n)
  let results = 0
  const began = now()
  yield* Effect.forEach(
    mine,
    (n) =>
      ThreeSteps.execute({ n }).pipe(
        Effect.flatMap((result) =>
          result === (n + 1) * 2 - 1
            ? Effect.sync(() => {
              results++
            })
            : Effect.die(`workflow ${n}: ${result}, not ${(n + 1) * 2 - 1}`)
        )
      ),
    { concurrency: config.inFlight, discard: true }
  )
  const ended = now()
  yield* Effect.promise(() => send({ type: "done", began, ended, results }))
  // Runs the other runners' executions until the bench says stop.
  yield* Effect.never
})

const main = program.pipe(
  Effect.provide(ThreeStepsLayer.pipe(Layer.provideMerge(engineLayer))),
  Effect.provideService(References.MinimumLogLevel, "Warn")
)

Effect.runPromise(main as any).then(
  () => process.exit(0),
  (err) => {
    console.error(err)
    process.exit(1)
  }
)
