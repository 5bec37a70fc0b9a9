// Timings for BenchmarkE2B: with argv[2] == "create", one Sandbox.create()
// followed by the first commands.run('true') (milliseconds on one line,
// then the sandbox is killed); with "runs N", one sandbox, its id on a
// line, then N commands.run('true') timings, then it waits for stdin to
// close before killing the sandbox (the caller measures vm exec meanwhile).
const path = require('node:path')
const { Sandbox } = require(path.join(process.env.E2B_SDK_DIR, 'node_modules', 'e2b'))

async function main() {
  if (process.argv[2] === 'create') {
    const t0 = performance.now()
    const sbx = await Sandbox.create()
    await sbx.commands.run('true')
    console.log('create-run-ms ' + (performance.now() - t0).toFixed(1))
    await sbx.kill()
    return
  }
  const n = Number(process.argv[3])
  const sbx = await Sandbox.create()
  console.log('sandbox ' + sbx.sandboxId)
  await sbx.commands.run('true') // warm
  for (let i = 0; i < n; i++) {
    const t0 = performance.now()
    await sbx.commands.run('true')
    console.log('run-ms ' + (performance.now() - t0).toFixed(1))
  }
  console.log('done')
  process.stdin.resume()
  await new Promise((r) => process.stdin.on('end', r))
  await sbx.kill()
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
