// Drives envd through the real `e2b` npm SDK. Run by TestSDK with
// E2B_SDK_DIR (an npm prefix holding node_modules/e2b), E2B_API_URL,
// E2B_SANDBOX_URL and E2B_API_KEY set; WORK_DIR is a scratch directory.
// Prints one line per check and exits non-zero on the first failure.
const path = require('node:path')
const assert = require('node:assert/strict')
const { Sandbox, CommandExitError, NotFoundError } = require(
  path.join(process.env.E2B_SDK_DIR, 'node_modules', 'e2b')
)

const work = process.env.WORK_DIR
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

async function step(name, fn) {
  try {
    await fn()
    console.log('ok   ' + name)
  } catch (e) {
    console.log('FAIL ' + name + ': ' + (e && e.stack ? e.stack : e))
    process.exit(1)
  }
}

async function main() {
  const sbx = await Sandbox.create()
  await step('commands.run exit 3', async () => {
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
  await step('commands.run ok with env and cwd', async () => {
    const r = await sbx.commands.run('echo $FOO; pwd', { envs: { FOO: 'bar' }, cwd: work })
    assert.equal(r.exitCode, 0)
    assert.equal(r.stdout, 'bar\n' + work + '\n')
  })
  await step('background command with stdin, list, kill', async () => {
    let seen = ''
    const h = await sbx.commands.run('cat', {
      background: true,
      stdin: true,
      onStdout: (d) => {
        seen += d
      },
    })
    await sbx.commands.sendStdin(h.pid, 'line one\n')
    await sbx.commands.sendStdin(h.pid, 'line two\n')
    for (let i = 0; i < 100 && !seen.includes('line two'); i++) await sleep(50)
    assert.equal(seen, 'line one\nline two\n')
    const list = await sbx.commands.list()
    assert.ok(list.some((p) => p.pid === h.pid), 'pid in commands.list')
    assert.equal(await sbx.commands.kill(h.pid), true)
    let err
    try {
      await h.wait()
    } catch (e) {
      err = e
    }
    assert.ok(err instanceof CommandExitError, 'killed command ends with CommandExitError')
    assert.equal(await sbx.commands.kill(h.pid), false)
  })
  await step('closeStdin', async () => {
    const h = await sbx.commands.run('cat', { background: true, stdin: true })
    await sbx.commands.sendStdin(h.pid, 'x\n')
    await sbx.commands.closeStdin(h.pid)
    const r = await h.wait()
    assert.equal(r.stdout, 'x\n')
  })
  await step('commands.connect by pid', async () => {
    const h = await sbx.commands.run('sleep 0.5; echo late', { background: true })
    await h.disconnect()
    const again = await sbx.commands.connect(h.pid)
    const r = await again.wait()
    assert.equal(r.stdout, 'late\n')
  })
  await step('files text', async () => {
    const p = work + '/dir/a.txt'
    const info = await sbx.files.write(p, 'hello')
    assert.equal(info.path, p)
    assert.equal(await sbx.files.read(p), 'hello')
    assert.equal(await sbx.files.exists(p), true)
    assert.equal(await sbx.files.exists(work + '/nope'), false)
    const st = await sbx.files.getInfo(p)
    assert.equal(st.type, 'file')
    assert.equal(st.size, 5)
    const ls = await sbx.files.list(work + '/dir')
    assert.deepEqual(ls.map((e) => e.name), ['a.txt'])
  })
  await step('files binary 1 MiB', async () => {
    const blob = new Uint8Array(1 << 20)
    for (let i = 0; i < blob.length; i++) blob[i] = (i * 7) & 255
    await sbx.files.write(work + '/blob.bin', blob.buffer)
    const back = await sbx.files.read(work + '/blob.bin', { format: 'bytes' })
    assert.equal(back.length, blob.length)
    assert.ok(Buffer.from(back).equals(Buffer.from(blob)), 'same bytes')
  })
  await step('files makeDir rename remove', async () => {
    assert.equal(await sbx.files.makeDir(work + '/made/deep'), true)
    assert.equal(await sbx.files.makeDir(work + '/made/deep'), false)
    const moved = await sbx.files.rename(work + '/dir/a.txt', work + '/made/b.txt')
    assert.equal(moved.name, 'b.txt')
    await sbx.files.remove(work + '/made')
    assert.equal(await sbx.files.exists(work + '/made'), false)
    let err
    try {
      await sbx.files.read(work + '/made/b.txt')
    } catch (e) {
      err = e
    }
    assert.ok(err instanceof NotFoundError, 'read of a removed file: ' + err)
  })
  await step('files.watchDir sees a write', async () => {
    const events = []
    const w = await sbx.files.watchDir(work, (e) => events.push(e))
    await sbx.files.write(work + '/watched.txt', 'w')
    for (let i = 0; i < 100 && !events.some((e) => e.name === 'watched.txt'); i++) await sleep(50)
    await w.stop()
    assert.ok(events.some((e) => e.name === 'watched.txt'), JSON.stringify(events))
  })
  await step('file metadata: written, read back lower-cased, replaced by the next upload', async () => {
    const p = work + '/meta.txt'
    const info = await sbx.files.write(p, 'm', { metadata: { Owner: 'agent-7', 'build.id': '42' } })
    assert.deepEqual(info.metadata, { owner: 'agent-7', 'build.id': '42' })
    assert.deepEqual((await sbx.files.getInfo(p)).metadata, { owner: 'agent-7', 'build.id': '42' })
    const listed = (await sbx.files.list(work)).find((e) => e.name === 'meta.txt')
    assert.deepEqual(listed.metadata, { owner: 'agent-7', 'build.id': '42' })
    await sbx.files.write(p, 'n', { metadata: { stage: 'two' } })
    assert.deepEqual((await sbx.files.getInfo(p)).metadata, { stage: 'two' })
    await sbx.files.write(p, 'o')
    assert.equal((await sbx.files.getInfo(p)).metadata, undefined)
  })
  await step('files.watchDir with includeEntry carries the entry', async () => {
    const events = []
    // allowNetworkMounts (envd 0.6.4) changes nothing on a local disk.
    const w = await sbx.files.watchDir(work, (e) => events.push(e), { includeEntry: true, allowNetworkMounts: true })
    await sbx.files.write(work + '/entry.txt', 'twelve bytes')
    const seen = () => events.find((e) => e.name === 'entry.txt' && e.entry && e.entry.size === 12)
    for (let i = 0; i < 100 && !seen(); i++) await sleep(50)
    await w.stop()
    assert.ok(seen(), JSON.stringify(events))
    assert.equal(seen().entry.type, 'file')
  })
  await step('pty', async () => {
    let out = ''
    const h = await sbx.pty.create({
      cols: 80,
      rows: 24,
      onData: (d) => {
        out += Buffer.from(d).toString()
      },
    })
    await sbx.pty.sendInput(h.pid, new TextEncoder().encode('echo pty-$((6*7))\n'))
    for (let i = 0; i < 100 && !out.includes('pty-42'); i++) await sleep(50)
    await sbx.pty.resize(h.pid, { cols: 100, rows: 30 })
    assert.ok(out.includes('pty-42'), out)
    await sbx.pty.kill(h.pid)
  })
  await step('kill', async () => {
    await sbx.kill()
  })
}

main().catch((e) => {
  console.log('FAIL ' + (e && e.stack ? e.stack : e))
  process.exit(1)
})
