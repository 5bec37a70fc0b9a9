// The E2B SDK against banger on real guests. Run by TestE2BSDK with only
// E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY set for the SDK
// (E2B_SDK_DIR says where the pinned SDK is installed). Prints one line
// per check; exits non-zero on the first failure.
const path = require('node:path')
const http = require('node:http')
const assert = require('node:assert/strict')
const { Sandbox, CommandExitError, AuthenticationError, NotFoundError } = require(
  path.join(process.env.E2B_SDK_DIR, 'node_modules', 'e2b')
)

const { sleep, step } = require('./steps.cjs')

// get fetches a path of the listener with a Host header (getHost names
// need wildcard DNS, which the test host does not have), and the
// sandbox's traffic access token when given one.
function get(host, urlPath, token) {
  const api = new URL(process.env.E2B_API_URL)
  const headers = { Host: host }
  if (token !== undefined) headers['e2b-traffic-access-token'] = token
  return new Promise((resolve, reject) => {
    const req = http.request({ host: api.hostname, port: api.port, path: urlPath, headers }, (res) => {
      let body = ''
      res.on('data', (d) => (body += d))
      res.on('end', () => resolve({ status: res.statusCode, body }))
    })
    req.on('error', reject)
    req.end()
  })
}

async function main() {
  const tag = 'e2e' + Date.now()
  let sbx
  // With the newer SDK the sandbox's ports need its traffic token.
  const restricted = process.env.E2B_FORK === '1'
  await step('Sandbox.create', async () => {
    const network = restricted ? { network: { allowPublicTraffic: false, maskRequestHost: 'localhost:${PORT}', httpsPorts: [8443] } } : {}
    sbx = await Sandbox.create({ metadata: { suite: tag }, envs: { GREETING: 'hello' }, timeoutMs: 600_000, ...network })
    assert.equal(typeof sbx.trafficAccessToken, restricted ? 'string' : 'undefined')
    console.log('sandbox ' + sbx.sandboxId)
  })
  await step('commands.run: stdout, stderr, exit 3', async () => {
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
  })
  await step('commands run as user, root on request, sudo, envVars', async () => {
    const r = await sbx.commands.run('whoami; echo $HOME; pwd; echo $GREETING; sudo -n true && echo sudo-ok')
    assert.equal(r.stdout, 'user\n/home/user\n/home/user\nhello\nsudo-ok\n')
    const root = await sbx.commands.run('whoami', { user: 'root' })
    assert.equal(root.stdout, 'root\n')
  })
  await step('background command: sendStdin echoes, list, kill', async () => {
    let seen = ''
    const h = await sbx.commands.run('cat', { background: true, stdin: true, onStdout: (d) => (seen += d) })
    await sbx.commands.sendStdin(h.pid, 'line one\n')
    await sbx.commands.sendStdin(h.pid, 'line two\n')
    for (let i = 0; i < 200 && !seen.includes('line two'); i++) await sleep(50)
    assert.equal(seen, 'line one\nline two\n')
    const list = await sbx.commands.list()
    assert.ok(list.some((p) => p.pid === h.pid), 'pid in commands.list')
    assert.equal(await sbx.commands.kill(h.pid), true)
    await assert.rejects(h.wait(), CommandExitError)
  })
  await step('closeStdin ends a reader; commands.connect re-attaches by pid', async () => {
    const cat = await sbx.commands.run('cat', { background: true, stdin: true })
    await sbx.commands.sendStdin(cat.pid, 'x\n')
    await sbx.commands.closeStdin(cat.pid)
    assert.equal((await cat.wait()).stdout, 'x\n')
    const late = await sbx.commands.run('sleep 1; echo late', { background: true })
    await late.disconnect()
    const again = await sbx.commands.connect(late.pid)
    assert.equal((await again.wait()).stdout, 'late\n')
  })
  await step('files: text, 1 MiB binary, list, exists, getInfo, makeDir, rename, remove', async () => {
    await sbx.files.write('notes/a.txt', 'hello file')
    assert.equal(await sbx.files.read('/home/user/notes/a.txt'), 'hello file')
    const blob = new Uint8Array(1 << 20)
    for (let i = 0; i < blob.length; i++) blob[i] = (i * 7 + (i >> 8)) & 255
    await sbx.files.write('notes/blob.bin', blob.buffer)
    const back = await sbx.files.read('notes/blob.bin', { format: 'bytes' })
    assert.ok(Buffer.from(back).equals(Buffer.from(blob)), 'binary round trip')
    const ls = await sbx.files.list('notes')
    assert.deepEqual(ls.map((e) => e.name).sort(), ['a.txt', 'blob.bin'])
    assert.equal(await sbx.files.exists('notes/a.txt'), true)
    assert.equal(await sbx.files.exists('notes/none'), false)
    const info = await sbx.files.getInfo('notes/blob.bin')
    assert.equal(info.type, 'file')
    assert.equal(info.size, 1 << 20)
    assert.equal(info.owner, 'user')
    assert.equal(await sbx.files.makeDir('made/deep'), true)
    await sbx.files.rename('notes/a.txt', 'made/deep/b.txt')
    assert.equal(await sbx.files.read('made/deep/b.txt'), 'hello file')
    await sbx.files.remove('made')
    assert.equal(await sbx.files.exists('made'), false)
    await assert.rejects(sbx.files.read('made/deep/b.txt'), NotFoundError)
  })
  await step('files.watchDir sees a write, with its entry when asked', async () => {
    const events = []
    const w = await sbx.files.watchDir('notes', (e) => events.push(e), { includeEntry: true, allowNetworkMounts: true })
    await sbx.files.write('notes/watched.txt', 'w')
    const seen = () => events.find((e) => e.name === 'watched.txt' && e.entry && e.entry.size === 1)
    for (let i = 0; i < 200 && !seen(); i++) await sleep(50)
    await w.stop()
    assert.ok(seen(), JSON.stringify(events))
  })
  await step('file metadata: kept on the file, lower-cased, replaced by the next upload', async () => {
    const info = await sbx.files.write('notes/meta.txt', 'm', { metadata: { Owner: 'agent-7' } })
    assert.deepEqual(info.metadata, { owner: 'agent-7' })
    assert.deepEqual((await sbx.files.getInfo('notes/meta.txt')).metadata, { owner: 'agent-7' })
    // An extended attribute of the guest's file, as E2B keeps it.
    const x = await sbx.commands.run(`python3 -c "import os; print(os.getxattr('notes/meta.txt', 'user.e2b.owner').decode())"`)
    assert.equal(x.stdout, 'agent-7\n')
    await sbx.files.write('notes/meta.txt', 'n')
    assert.equal((await sbx.files.getInfo('notes/meta.txt')).metadata, undefined)
  })
  await step('getHost(8000) serves a guest http.server through the listener', async () => {
    await sbx.files.write('www/index.html', 'served-from-guest')
    await sbx.commands.run('python3 -m http.server 8000', { background: true, cwd: '/home/user/www' })
    const host = sbx.getHost(8000)
    let res
    for (let i = 0; i < 120; i++) {
      res = await get(host, '/index.html', sbx.trafficAccessToken)
      if (res.status === 200) break
      await sleep(500)
    }
    assert.equal(res.status, 200, JSON.stringify(res))
    assert.equal(res.body, 'served-from-guest')
    if (restricted) {
      assert.equal((await get(host, '/index.html')).status, 403)
      assert.equal((await get(host, '/index.html', sbx.envdAccessToken)).status, 403)
    }
  })
  if (restricted) {
    await step('maskRequestHost and httpsPorts: a guest TLS service sees the masked Host', async () => {
      await sbx.files.write('/home/user/tls.pem', require('node:fs').readFileSync(path.join(__dirname, 'guest-tls.pem')))
      await sbx.files.write('/home/user/tls_echo.py', [
        'import http.server, ssl',
        'class H(http.server.BaseHTTPRequestHandler):',
        '    def do_GET(self):',
        "        b = ('tls ' + self.headers.get('Host', '')).encode()",
        '        self.send_response(200)',
        "        self.send_header('Content-Length', str(len(b)))",
        '        self.end_headers()',
        '        self.wfile.write(b)',
        "s = http.server.HTTPServer(('127.0.0.1', 8443), H)",
        'c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)',
        "c.load_cert_chain('/home/user/tls.pem')",
        's.socket = c.wrap_socket(s.socket, server_side=True)',
        's.serve_forever()',
      ].join('\n') + '\n')
      await sbx.commands.run('python3 /home/user/tls_echo.py', { background: true })
      let res
      for (let i = 0; i < 120; i++) {
        res = await get(sbx.getHost(8443), '/', sbx.trafficAccessToken)
        if (res.status === 200) break
        await sleep(500)
      }
      assert.equal(res.status, 200, JSON.stringify(res))
      assert.equal(res.body, 'tls localhost:8443')
      const info = await sbx.getInfo()
      assert.equal(info.network.maskRequestHost, 'localhost:${PORT}')
      assert.deepEqual(info.network.httpsPorts, [8443])
    })
  }
  await step('setTimeout extends; getInfo', async () => {
    await sbx.setTimeout(900_000)
    const info = await sbx.getInfo()
    const left = new Date(info.endAt).getTime() - Date.now()
    assert.ok(left > 800_000 && left <= 901_000, 'deadline in ' + left + ' ms')
    assert.deepEqual(info.metadata, { suite: tag })
  })
  await step('getMetrics samples the guest', async () => {
    const [m] = await sbx.getMetrics()
    assert.ok(m.cpuCount >= 1 && m.memTotal > 0 && m.memUsed > 0 && m.diskTotal > 0 && m.diskUsed > 0, JSON.stringify(m))
  })
  await step('Sandbox.list with a metadata filter shows metadata and state', async () => {
    const mine = await Sandbox.list({ query: { metadata: { suite: tag } } }).nextItems()
    assert.deepEqual(mine.map((s) => [s.sandboxId, s.state, s.metadata]), [[sbx.sandboxId, 'running', { suite: tag }]])
    const none = await Sandbox.list({ query: { metadata: { suite: 'other' + tag } } }).nextItems()
    assert.equal(none.length, 0)
  })
  await step('Sandbox.connect', async () => {
    const again = await Sandbox.connect(sbx.sandboxId)
    assert.equal((await again.commands.run('echo again')).stdout, 'again\n')
  })
  if (process.env.E2B_FORK === '1') {
    await step('fork: the copy resumes the source (files, envd, environment) as another machine', async () => {
      await sbx.files.write('/tmp/before-fork.txt', 'forked')
      const forks = await sbx.fork({ timeoutMs: 120_000 })
      assert.equal(forks.length, 1)
      const f = forks[0]
      assert.ok(f instanceof Sandbox, 'fork failed: ' + f)
      assert.equal(await f.files.read('/tmp/before-fork.txt'), 'forked')
      const r = await f.commands.run('echo $GREETING; hostname')
      const mine = (await sbx.commands.run('hostname')).stdout
      assert.equal(r.stdout, 'hello\n' + f.sandboxId + '\n')
      assert.equal(mine, sbx.sandboxId + '\n')
      // Its own metadata (the source's) and its own envd token: the
      // source's no longer opens the envd the fork was restored with.
      assert.deepEqual((await f.getInfo()).metadata, { suite: tag })
      assert.notEqual(f.envdAccessToken, sbx.envdAccessToken)
      // And its own traffic token: the source's does not open its ports
      // (its http.server on 8000 was restored with it).
      assert.ok(f.trafficAccessToken && f.trafficAccessToken !== sbx.trafficAccessToken)
      assert.equal((await get(f.getHost(8000), '/index.html', sbx.trafficAccessToken)).status, 403)
      const served = await get(f.getHost(8000), '/index.html', f.trafficAccessToken)
      assert.equal(served.status, 200, JSON.stringify(served))
      const list = (token) => fetch(process.env.E2B_SANDBOX_URL + '/process.Process/List', {
        method: 'POST', body: '{}',
        headers: { 'Content-Type': 'application/json', 'E2b-Sandbox-Id': f.sandboxId, 'E2b-Sandbox-Port': '49983', 'X-Access-Token': token },
      })
      assert.equal((await list(sbx.envdAccessToken)).status, 401)
      assert.equal((await list(f.envdAccessToken)).status, 200)
      assert.equal(await f.kill(), true)
    })
  }
  if (process.env.E2B_FORK === '1') {
    await step('updateNetwork: egress rules become the VM policy; getInfo shows them', async () => {
      await sbx.updateNetwork({ denyOut: ['203.0.113.0/24'], allowOut: ['203.0.113.9'] })
      let info = await sbx.getInfo()
      assert.equal(info.allowInternetAccess, true)
      assert.deepEqual(info.network.allowOut, ['203.0.113.9'])
      assert.equal(info.network.denyOut.length, 8, JSON.stringify(info.network.denyOut))
      // Domain names: with everything else denied, as E2B requires.
      await assert.rejects(sbx.updateNetwork({ allowOut: ['example.com'] }), /needs all other traffic denied/)
      await sbx.updateNetwork({ denyOut: ['0.0.0.0/0'], allowOut: ['example.com', '*.example.org'] })
      info = await sbx.getInfo()
      assert.equal(info.allowInternetAccess, false)
      assert.deepEqual(info.network.allowOut, ['*.example.org', 'example.com'])
      assert.deepEqual(info.network.denyOut, ['0.0.0.0/0'])
      await sbx.updateNetwork({})
      info = await sbx.getInfo()
      // The default egress again; the traffic token stays.
      assert.equal(info.network.allowOut, undefined)
      assert.equal(info.network.denyOut, undefined)
      assert.equal(info.network.allowPublicTraffic, false)
      assert.equal((await sbx.commands.run('echo still')).stdout, 'still\n')
    })
  }
  await step('pty: create, input, resize, kill', async () => {
    let out = ''
    const h = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => (out += Buffer.from(d).toString()) })
    await sbx.pty.sendInput(h.pid, new TextEncoder().encode('echo pty-$((6*7)) $(whoami)\n'))
    for (let i = 0; i < 200 && !out.includes('pty-42 user'); i++) await sleep(50)
    assert.ok(out.includes('pty-42 user'), out)
    await sbx.pty.resize(h.pid, { cols: 100, rows: 30 })
    assert.equal(await sbx.pty.kill(h.pid), true)
  })
  await step('pause, then connect resumes: files and background commands kept', async () => {
    await sbx.files.write('kept.txt', 'written before the pause')
    const bg = await sbx.commands.run('sleep 3600', { background: true })
    assert.equal(await sbx.pause(), true)
    assert.equal(await sbx.pause(), false)
    assert.equal(await sbx.isRunning(), false)
    const paused = await Sandbox.list({ query: { metadata: { suite: tag }, state: ['paused'] } }).nextItems()
    assert.deepEqual(paused.map((s) => [s.sandboxId, s.state]), [[sbx.sandboxId, 'paused']])
    const running = await Sandbox.list({ query: { metadata: { suite: tag }, state: ['running'] } }).nextItems()
    assert.equal(running.length, 0)
    assert.ok(new Date((await sbx.getInfo()).endAt).getTime() <= 0, 'a paused sandbox keeps no deadline')
    const again = await Sandbox.connect(sbx.sandboxId, { timeoutMs: 600_000 })
    assert.equal(await again.isRunning(), true)
    assert.equal(await again.files.read('kept.txt'), 'written before the pause')
    const list = await again.commands.list()
    assert.ok(list.some((p) => p.pid === bg.pid), 'background pid ' + bg.pid + ' in ' + JSON.stringify(list.map((p) => p.pid)))
    assert.equal((await again.commands.run('echo resumed')).stdout, 'resumed\n')
    assert.equal((await again.getInfo()).state, 'running')
    await again.commands.kill(bg.pid)
  })
  await step('kill: isRunning false, URL 502', async () => {
    const host = sbx.getHost(49983)
    await sbx.kill()
    assert.equal(await sbx.isRunning(), false)
    assert.equal((await get(host, '/health')).status, 502)
  })
  await step('a short timeout deletes the sandbox on time', async () => {
    const t0 = Date.now()
    // The timeout counts from when the sandbox is ready, so it is gone
    // no sooner than 10 s after the request.
    const short = await Sandbox.create({ timeoutMs: 10_000 })
    assert.equal(await short.isRunning(), true)
    while (await short.isRunning()) {
      assert.ok(Date.now() - t0 < 60_000, 'still running 60 s after a 10 s timeout')
      await sleep(1000)
    }
    const gone = Date.now() - t0
    assert.ok(gone >= 10_000, 'gone after ' + gone + ' ms, before its timeout')
    console.log('short sandbox gone after ' + gone + ' ms')
  })
  // With the newer SDK the sandbox also asks for autoResume: a request
  // relayed to it once paused wakes it (no connect), and getInfo, which
  // goes to the control plane, does not.
  const autoResume = process.env.E2B_FORK === '1'
  await step('a short timeout with onTimeout pause pauses the sandbox' + (autoResume ? '; traffic resumes it' : ''), async () => {
    const t0 = Date.now()
    const lifecycle = autoResume ? { onTimeout: 'pause', autoResume: true } : { onTimeout: 'pause' }
    const ap = await Sandbox.create({ timeoutMs: 10_000, lifecycle, metadata: { suite: tag + 'ap' } })
    await ap.files.write('ap.txt', 'kept')
    let info
    for (;;) {
      info = await ap.getInfo()
      if (info.state === 'paused') break
      assert.ok(Date.now() - t0 < 90_000, 'still ' + info.state + ' 90 s after a 10 s timeout')
      await sleep(1000)
    }
    assert.deepEqual(info.lifecycle, { onTimeout: 'pause', autoResume })
    console.log('autoPause sandbox paused after ' + (Date.now() - t0) + ' ms')
    if (autoResume) {
      assert.equal(await ap.files.read('ap.txt'), 'kept')
      assert.equal((await ap.getInfo()).state, 'running')
      assert.equal((await ap.commands.run('echo awake')).stdout, 'awake\n')
      await ap.kill()
    } else {
      assert.equal(await ap.isRunning(), false)
      const back = await Sandbox.connect(ap.sandboxId)
      assert.equal(await back.files.read('ap.txt'), 'kept')
      await back.kill()
    }
  })
  await step('wrong API key', async () => {
    await assert.rejects(Sandbox.list({ apiKey: 'e2b_wrong' }).nextItems(), AuthenticationError)
  })
}

main().catch((e) => {
  console.log('FAIL ' + (e && e.stack ? e.stack : e))
  process.exit(1)
})
