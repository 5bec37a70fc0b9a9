// Drives banger's E2B control plane through the real `e2b` npm SDK, with
// only E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY set (E2B_SDK_DIR says
// where the SDK is installed). GUEST_WEB_PORT, when set, is a guest port
// serving HTTP, fetched through getHost (Host routing). Prints one line
// per check; exits non-zero on the first failure.
const path = require('node:path')
const http = require('node:http')
const https = require('node:https')
const assert = require('node:assert/strict')
const sdk = require(path.join(process.env.E2B_SDK_DIR, 'node_modules', 'e2b'))
const { Sandbox, CommandExitError, AuthenticationError, RateLimitError } = sdk

async function step(name, fn) {
  try {
    await fn()
    console.log('ok   ' + name)
  } catch (e) {
    console.log('FAIL ' + name + ': ' + (e && e.stack ? e.stack : e))
    process.exit(1)
  }
}

// get fetches a URL of the listener with the given Host header (getHost
// names need wildcard DNS, which tests do not have). Over https the name
// goes in the TLS server name too, as from a client that resolved it.
function get(host, urlPath) {
  const api = new URL(process.env.E2B_API_URL)
  const tls = api.protocol === 'https:'
  return new Promise((resolve, reject) => {
    const req = (tls ? https : http).request(
      { host: api.hostname, port: api.port, path: urlPath, headers: { Host: host },
        servername: tls ? host.replace(/:\d+$/, '') : undefined },
      (res) => {
        let body = ''
        res.on('data', (d) => (body += d))
        res.on('end', () => resolve({ status: res.statusCode, body }))
      }
    )
    req.on('error', reject)
    req.end()
  })
}

async function main() {
  const tag = 'run' + Date.now()
  let sbx
  await step('Sandbox.create', async () => {
    sbx = await Sandbox.create({ metadata: { suite: tag }, envs: { GREETING: 'hello' }, timeoutMs: 300_000 })
    assert.ok(sbx.sandboxId.startsWith('e2b'))
  })
  await step('commands.run exit 3 and default env', async () => {
    let err
    try {
      await sbx.commands.run('echo hi; echo err >&2; exit 3')
    } catch (e) {
      err = e
    }
    assert.ok(err instanceof CommandExitError, 'want CommandExitError, got ' + err)
    assert.equal(err.exitCode, 3)
    assert.equal(err.stdout, 'hi\n')
    assert.equal(err.stderr, 'err\n')
    const r = await sbx.commands.run('echo $GREETING')
    assert.equal(r.stdout, 'hello\n')
  })
  await step('files write/read', async () => {
    await sbx.files.write('/tmp/e2b-test.txt', 'content')
    assert.equal(await sbx.files.read('/tmp/e2b-test.txt'), 'content')
  })
  if (process.env.GUEST_WEB_PORT) {
    await step('getHost routes by Host', async () => {
      const port = Number(process.env.GUEST_WEB_PORT)
      const host = sbx.getHost(port)
      assert.ok(host.startsWith(`${port}-${sbx.sandboxId}.`), host)
      let res
      for (let i = 0; i < 100; i++) {
        res = await get(host, '/')
        if (res.status === 200) break
        await new Promise((r) => setTimeout(r, 200))
      }
      assert.equal(res.status, 200, res.body)
      assert.ok(res.body.length > 0)
    })
  }
  await step('Sandbox.list with a metadata filter', async () => {
    const other = await Sandbox.list({ query: { metadata: { suite: 'not-' + tag } } }).nextItems()
    assert.equal(other.length, 0)
    const mine = await Sandbox.list({ query: { metadata: { suite: tag } } }).nextItems()
    assert.deepEqual(mine.map((s) => s.sandboxId), [sbx.sandboxId])
    assert.equal(mine[0].state, 'running')
    assert.deepEqual(mine[0].metadata, { suite: tag })
  })
  await step('setTimeout and getInfo', async () => {
    await sbx.setTimeout(600_000)
    const info = await sbx.getInfo()
    assert.equal(info.sandboxId, sbx.sandboxId)
    const left = new Date(info.endAt).getTime() - Date.now()
    assert.ok(left > 500_000 && left <= 601_000, 'deadline in ' + left + ' ms')
  })
  await step('getMetrics', async () => {
    const m = await sbx.getMetrics()
    assert.equal(m.length, 1)
    assert.ok(m[0].cpuCount >= 1 && m[0].memTotal > 0 && m[0].diskTotal > 0, JSON.stringify(m))
    assert.ok(m[0].timestamp instanceof Date && !isNaN(m[0].timestamp))
  })
  await step('Sandbox.connect', async () => {
    const again = await Sandbox.connect(sbx.sandboxId)
    const r = await again.commands.run('echo again')
    assert.equal(r.stdout, 'again\n')
  })
  await step('fork keeps the environment', async () => {
    const forks = await sbx.fork({ count: 1, timeoutMs: 60_000 })
    assert.equal(forks.length, 1)
    assert.ok(forks[0] instanceof Sandbox, 'fork failed: ' + forks[0])
    assert.notEqual(forks[0].sandboxId, sbx.sandboxId)
    assert.equal((await forks[0].commands.run('echo $GREETING')).stdout, 'hello\n')
    await forks[0].kill()
  })
  await step('createSnapshot, listSnapshots, create from it, deleteSnapshot', async () => {
    const snap = await sbx.createSnapshot({ name: 'snap-' + tag })
    assert.equal(snap.snapshotId, 'snap-' + tag)
    const listed = await Sandbox.listSnapshots({ sandboxId: sbx.sandboxId }).nextItems()
    assert.deepEqual(listed.map((s) => s.snapshotId), [snap.snapshotId])
    const copy = await Sandbox.create(snap.snapshotId, { timeoutMs: 60_000 })
    assert.equal((await copy.commands.run('echo $GREETING')).stdout, 'hello\n')
    await copy.kill()
    assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), true)
    assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), false)
  })
  await step('pause, list paused, connect resumes', async () => {
    assert.equal(await sbx.pause(), true)
    assert.equal(await sbx.pause(), false)
    assert.equal(await sbx.isRunning(), false)
    const paused = await Sandbox.list({ query: { metadata: { suite: tag }, state: ['paused'] } }).nextItems()
    assert.deepEqual(paused.map((s) => [s.sandboxId, s.state]), [[sbx.sandboxId, 'paused']])
    const again = await Sandbox.connect(sbx.sandboxId)
    assert.equal((await again.commands.run('echo resumed')).stdout, 'resumed\n')
    assert.equal((await again.getInfo()).state, 'running')
  })
  await step('lifecycle onTimeout pause', async () => {
    const ap = await Sandbox.create({ lifecycle: { onTimeout: 'pause' } })
    assert.equal((await ap.getInfo()).lifecycle.onTimeout, 'pause')
    await ap.kill()
  })
  await step('kill, then isRunning false and 502', async () => {
    const host = sbx.getHost(49983)
    await sbx.kill()
    assert.equal(await sbx.isRunning(), false)
    const res = await get(host, '/health')
    assert.equal(res.status, 502)
    assert.equal(await Sandbox.kill(sbx.sandboxId), false)
  })
  if (process.env.E2B_CAPPED_KEY) {
    // A key capped at one sandbox (banger e2b key create --max-sandboxes 1).
    await step('a key over its sandbox cap: RateLimitError', async () => {
      const one = await Sandbox.create({ apiKey: process.env.E2B_CAPPED_KEY })
      let err
      try {
        await Sandbox.create({ apiKey: process.env.E2B_CAPPED_KEY })
      } catch (e) {
        err = e
      }
      assert.ok(err instanceof RateLimitError, 'want RateLimitError, got ' + err)
      assert.match(err.message, /maximum number of concurrent E2B sandboxes \(1\)/)
      await one.kill()
    })
  }
  await step('wrong API key', async () => {
    let err
    try {
      await Sandbox.create({ apiKey: 'e2b_wrong' })
    } catch (e) {
      err = e
    }
    assert.ok(err instanceof AuthenticationError, 'want AuthenticationError, got ' + err)
  })
}

main().catch((e) => {
  console.log('FAIL ' + (e && e.stack ? e.stack : e))
  process.exit(1)
})
