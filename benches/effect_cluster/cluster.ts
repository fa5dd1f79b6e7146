// Effect's side of plait's cluster benchmark (benches/cluster.py): persisted entity RPCs over
// Effect 4's cluster with several socket runners, each a separate node process (runner.ts), on
// one PostgreSQL database (SQL message and runner storage).
//
//   node --import tsx cluster.ts <database-url> <runners> <requests> [<options json>]
//
// options: { portBase: 5600, inFlight: 1000, entities: 10000, timeout: 120 (seconds) }
//
// The database should be fresh (empty): benches/cluster.py makes one per run. The runners are
// started one after another (each once the one before has joined: their storage creates its
// tables on first use), then the program waits until the 300 shards are all held, every runner
// holding some, unchanged for 2 s. Then every runner sends its share, inFlight / runners at a
// time (inFlight in flight over the cluster). Prints one JSON line:
// {"requests", "runners", "seconds", "rps"}, seconds from the first runner's start of sending to
// the last one's end. Exits non-zero (the reason on stderr) if a runner fails or the timeout
// passes.
import { type ChildProcess, fork } from "node:child_process"
import { fileURLToPath } from "node:url"

const [pgUrl, runnersArg, requestsArg, optionsArg] = process.argv.slice(2)
if (!pgUrl || !runnersArg || !requestsArg) {
  console.error("usage: cluster.ts <database-url> <runners> <requests> [<options json>]")
  process.exit(2)
}
const options = JSON.parse(optionsArg ?? "{}")
const runners = Number(runnersArg)
const requests = Number(requestsArg)
const portBase: number = options.portBase ?? 5600
const inFlight: number = options.inFlight ?? 1000
const entities: number = options.entities ?? 10000
const timeout: number = options.timeout ?? 120
const SHARDS = 300
const STABLE_MS = 2000

interface Done {
  readonly began: number
  readonly ended: number
  readonly replies: number
}

const children: Array<ChildProcess> = []
const views = new Map<number, number>()
const done = new Map<number, Done>()

const stopAll = () => {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL")
  }
}

const fail = (reason: string): never => {
  console.error(`effect cluster bench: ${reason}`)
  stopAll()
  process.exit(1)
}

setTimeout(() => fail(`not done within ${timeout} s`), timeout * 1000).unref()
process.on("SIGTERM", () => fail("terminated"))

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

const until = async (ready: () => boolean) => {
  while (!ready()) await sleep(50)
}

const runnerScript = fileURLToPath(new URL("./runner.ts", import.meta.url))

const start = (index: number) => {
  const config = {
    pgUrl,
    port: portBase + index,
    index,
    runners,
    requests,
    inFlight: Math.floor(inFlight / runners),
    entities
  }
  // The runners' own output (Effect's warnings) goes to this program's stderr.
  const child = fork(runnerScript, [JSON.stringify(config)], {
    execArgv: ["--import", "tsx"],
    stdio: ["ignore", 2, 2, "ipc"]
  })
  child.on("message", (message: any) => {
    if (message.type === "view") views.set(index, message.shards)
    if (message.type === "done") done.set(index, message)
  })
  child.on("exit", (code, signal) => {
    if (done.size < runners) fail(`runner ${index} exited (${signal ?? code}) before it was done`)
  })
  children.push(child)
}

const settled = () => {
  if (views.size < runners) return false
  const held = [...views.values()]
  return held.reduce((a, b) => a + b, 0) === SHARDS && held.every((n) => n > 0)
}

for (let index = 0; index < runners; index++) {
  start(index)
  await until(() => views.has(index))
}
// Settled, and still so STABLE_MS later (a runner that has not yet seen a newcomer may still
// hold shards it is about to hand over).
for (;;) {
  await until(settled)
  const since = Date.now()
  await until(() => !settled() || Date.now() - since >= STABLE_MS)
  if (settled()) break
}
for (const child of children) child.send({ type: "go" })
await until(() => done.size === runners)

const all = [...done.values()]
const replies = all.reduce((a, d) => a + d.replies, 0)
if (replies !== requests) fail(`${replies} replies for ${requests} requests`)
const seconds = Math.max(...all.map((d) => d.ended)) - Math.min(...all.map((d) => d.began))
for (const child of children) child.send({ type: "stop" })
await sleep(200)
stopAll()
process.stdout.write(
  JSON.stringify({ requests, runners, seconds, rps: requests / seconds }) + "\n",
  () => process.exit(0)
)
