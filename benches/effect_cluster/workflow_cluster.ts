// Effect's side of plait's cluster workflow benchmark (benches/cluster_workflows.py): workflows
// of three activities over Effect 4's ClusterWorkflowEngine with several socket runners, each a
// separate node process (workflow_runner.ts), on one PostgreSQL database (SQL message and
// runner storage).
//
//   node --import tsx workflow_cluster.ts <database-url> <runners> <workflows> [<options json>]
//
// options: { portBase: 4960, inFlight: 1000, timeout: 180 (seconds) }
//
// The database should be fresh (empty): benches/cluster_workflows.py makes one per run. The
// runners are started one after another (each once the one before has joined: their storage
// creates its tables on first use), then the program waits until the 300 shards are all held,
// every runner holding some, unchanged for 2 s. Then every runner starts its share,
// inFlight / runners at a time (inFlight in flight over the cluster). Prints one JSON line:
// {"workflows", "runners", "seconds", "rate"}, seconds from the first runner's start of sending
// to the last one's last result. Exits non-zero (the reason on stderr) if a runner fails or the
// timeout passes.
import { type ChildProcess, fork } from "node:child_process"
import { fileURLToPath } from "node:url"

const [pgUrl, runnersArg, workflowsArg, optionsArg] = process.argv.slice(2)
if (!pgUrl || !runnersArg || !workflowsArg) {
  console.error("usage: workflow_cluster.ts <database-url> <runners> <workflows> [<options json>]")
  process.exit(2)
}
const options = JSON.parse(optionsArg ?? "{}")
const runners = Number(runnersArg)
const workflows = Number(workflowsArg)
const portBase: number = options.portBase ?? 4960
const inFlight: number = options.inFlight ?? 1000
const timeout: number = options.timeout ?? 180
const SHARDS = 300
const STABLE_MS = 2000

interface Done {
  readonly began: number
  readonly ended: number
  readonly results: number
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
  console.error(`effect workflow cluster bench: ${reason}`)
  stopAll()
  process.exit(1)
}

setTimeout(() => fail(`not done within ${timeout} s`), timeout * 1000).unref()
process.on("SIGTERM", () => fail("terminated"))

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

const until = async (ready: () => boolean) => {
  while (!ready()) await sleep(50)
}

const runnerScript = fileURLToPath(new URL("./workflow_runner.ts", import.meta.url))

const start = (index: number) => {
  const config = {
    pgUrl,
    port: portBase + index,
    index,
    runners,
    workflows,
    inFlight: Math.floor(inFlight / runners)
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
const results = all.reduce((a, d) => a + d.results, 0)
if (results !== workflows) fail(`${results} results for ${workflows} workflows`)
const seconds = Math.max(...all.map((d) => d.ended)) - Math.min(...all.map((d) => d.began))
for (const child of children) child.send({ type: "stop" })
await sleep(200)
stopAll()
process.stdout.write(
  JSON.stringify({ workflows, runners, seconds, rate: workflows / seconds }) + "\n",
  () => process.exit(0)
)
