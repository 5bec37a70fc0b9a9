// Timings for BenchmarkE2B: with argv[2] == "create", one Sandbox.create()
// followed by the first commands.run('true') (milliseconds on one line,
// then the sandbox is killed); with "runs", one sandbox, its id on a
// line, then one commands.run('true') timing per "run" line on stdin,
// interleaved by the caller with its vm exec timings; EOF kills it.
const path = require('node:path')
const { Sandbox } = require(path.join(process.env.E2B_SDK_DIR, 'node_modules', 'e2b'))

async function main() {
  if (process.argv[2] === 'create') {
    const t0 = performance.now()
    const sbx = await Sandbox.create()
    const t1 = performance.now()
    await sbx.commands.run('true')
    const t2 = performance.now()
    // The whole, then its parts: the create and the first run.
    console.log('create-run-ms ' + (t2 - t0).toFixed(1) + ' ' + (t1 - t0).toFixed(1) + ' ' + (t2 - t1).toFixed(1))
    await sbx.kill()
    return
  }
  // "runs": one sandbox, its id on a line, then one commands.run('true')
  // per "run" line on stdin (its time on a line), so that the caller can
  // interleave them with its own timings; the sandbox is killed at EOF.
  const sbx = await Sandbox.create()
  console.log('sandbox ' + sbx.sandboxId)
  await sbx.commands.run('true') // warm
  console.log('ready')
  const rl = require('node:readline').createInterface({ input: process.stdin })
  for await (const line of rl) {
    if (line.trim() !== 'run') continue
    const t0 = performance.now()
    await sbx.commands.run('true')
    console.log('run-ms ' + (performance.now() - t0).toFixed(1))
  }
  await sbx.kill()
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
