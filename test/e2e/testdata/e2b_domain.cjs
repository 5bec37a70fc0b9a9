// The E2B SDK against banger on a real guest with only E2B_DOMAIN and
// E2B_API_KEY set (and NODE_EXTRA_CA_CERTS for banger's CA): every URL
// is the SDK's own, https://api.<domain> and https://<port>-<id>.<domain>,
// resolved by banger's DNS responder (TestE2BDomain points this process's
// resolver at it). Prints one line per check; exits non-zero on the first
// failure.
const path = require('node:path')
const assert = require('node:assert/strict')
const { Sandbox } = require(path.join(process.env.E2B_SDK_DIR, 'node_modules', 'e2b'))

const { sleep, step } = require('./steps.cjs')

;(async () => {
  assert.ok(!process.env.E2B_API_URL && !process.env.E2B_SANDBOX_URL, 'only E2B_DOMAIN may say where banger is')
  let sbx
  await step('Sandbox.create() at https://api.<domain>', async () => {
    sbx = await Sandbox.create({ timeoutMs: 300_000 })
  })
  await step('commands.run through https://49983-<id>.<domain>', async () => {
    const r = await sbx.commands.run('echo hi from $(whoami)')
    assert.equal(r.stdout, 'hi from user\n')
  })
  await step('files.write / read', async () => {
    await sbx.files.write('www/index.html', 'served-by-name')
    assert.equal(await sbx.files.read('www/index.html'), 'served-by-name')
  })
  let server
  await step('a getHost(8000) URL, fetched as it is', async () => {
    server = await sbx.commands.run('python3 -m http.server 8000', { background: true, cwd: '/home/user/www' })
    const url = `https://${sbx.getHost(8000)}/index.html`
    assert.match(url, new RegExp(`^https://8000-${sbx.sandboxId}\\.`))
    let res, body
    for (let i = 0; i < 120; i++) {
      res = await fetch(url)
      body = await res.text()
      if (res.status === 200) break
      await sleep(500)
    }
    assert.equal(res.status, 200, body)
    assert.equal(body, 'served-by-name')
  })
  await step('Sandbox.list() and kill()', async () => {
    const items = await Sandbox.list().nextItems()
    assert.ok(items.some((s) => s.sandboxId === sbx.sandboxId), JSON.stringify(items))
    await sbx.kill()
    assert.equal(await sbx.isRunning(), false)
  })
  await step("kill() ends the background command's stream", async () => {
    // Its guest is gone: the relay cuts the stream rather than leave it
    // (and this process) waiting on TCP to give up, about a minute.
    const ended = server.wait().then(
      () => 'ended',
      () => 'ended'
    )
    let timer
    const late = new Promise((resolve) => {
      timer = setTimeout(() => resolve('still open after 30 s'), 30_000)
    })
    const outcome = await Promise.race([ended, late])
    clearTimeout(timer)
    assert.equal(outcome, 'ended')
  })
  console.log('ok   done')
})()
