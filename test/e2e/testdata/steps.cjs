// What the E2B SDK scripts share: sleep, and step, which runs one check,
// prints "ok   NAME (MS ms)", or "FAIL NAME: ..." and exits non-zero.
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

async function step(name, fn) {
  const t0 = Date.now()
  try {
    await fn()
    console.log(`ok   ${name} (${Date.now() - t0} ms)`)
  } catch (e) {
    console.log('FAIL ' + name + ': ' + (e && e.stack ? e.stack : e))
    process.exit(1)
  }
}

module.exports = { sleep, step }
