/**
 * Test hook, loaded into the holyship CLI with `node --import <this file> bin/run.js …` by
 * the crash tests only (no production code knows about it). With HOLYSHIP_TEST_CRASH set, the
 * process SIGKILLs itself at a chosen point:
 *
 *   rename:N         right after the Nth fs.promises.rename: every local backend put ends with
 *                    one (pack, index file, manifest durable), and restore --path places every
 *                    file with one
 *   rename-before:N  right before the Nth rename (the temporary file is written, not renamed)
 *   rename-to:TEXT   right after the first rename whose destination contains TEXT (e.g. /snapshots/)
 *   file:N           right after the Nth fs.futimesSync: restore --path sets a file's times
 *                    with it once the file's data is written, before it closes the file, on
 *                    the main thread or in a restore worker (this file is loaded in every
 *                    thread; they count together, so with two writing at once the kill may
 *                    come one file late)
 *   file-before:N    right before the Nth fs.futimesSync (the file's data is written)
 *   put:N            while the Nth HTTP PUT (an S3 upload) is on the wire
 *
 * With HOLYSHIP_TEST_CRASH_COUNT=FILE, the counts ({"rename":…, "put":…, "file":…, "renamed": [paths]})
 * are written to FILE at exit, so a test can measure a run first and spread its kill points
 * over it.
 */
import fs from 'node:fs'
import http from 'node:http'
import {syncBuiltinESMExports} from 'node:module'
import os from 'node:os'
import path from 'node:path'
import {isMainThread} from 'node:worker_threads'

const spec = process.env.HOLYSHIP_TEST_CRASH ?? ''
const mode = spec.slice(0, spec.indexOf(':') >>> 0)
const arg = spec.slice(spec.indexOf(':') + 1)
const at = Number(arg)
const countFile = process.env.HOLYSHIP_TEST_CRASH_COUNT
const counts = {rename: 0, put: 0, file: 0, /** where each rename went, in order */ renamed: []}

/**
 * The files finished (futimesSync calls) by all threads: one byte each, appended to a file the
 * main thread names in the environment its workers inherit.
 */
if (isMainThread) {
  process.env.HOLYSHIP_TEST_CRASH_FILES = path.join(os.tmpdir(), `holyship-crash-files-${process.pid}`)
  fs.writeFileSync(process.env.HOLYSHIP_TEST_CRASH_FILES, '')
}
const filesCounter = process.env.HOLYSHIP_TEST_CRASH_FILES
const filesDone = () => fs.statSync(filesCounter).size

function die() {
  if (countFile) fs.writeFileSync(countFile, JSON.stringify({...counts, file: filesDone(), killed: true}))
  fs.rmSync(filesCounter, {force: true})
  process.kill(process.pid, 'SIGKILL')
}

const rename = fs.promises.rename
fs.promises.rename = async function (...args) {
  counts.rename++
  counts.renamed.push(String(args[1]))
  const n = counts.rename
  if (mode === 'rename-before' && n === at) die()
  const r = await rename.apply(this, args)
  if (mode === 'rename' && n === at) die()
  if (mode === 'rename-to' && String(args[1]).includes(arg)) die()
  return r
}

const futimesSync = fs.futimesSync
fs.futimesSync = function (...args) {
  if (mode === 'file-before' && filesDone() + 1 >= at) die()
  const r = futimesSync.apply(this, args)
  fs.appendFileSync(filesCounter, 'x')
  if (mode === 'file' && filesDone() >= at) die()
  return r
}
// named imports of node:fs (import {futimesSync} from 'node:fs') see the patched function too
syncBuiltinESMExports()

const request = http.request
http.request = function (...args) {
  const req = request.apply(this, args)
  const opts = args.find((a) => a && typeof a === 'object' && !(a instanceof URL))
  if (String(opts?.method ?? 'GET').toUpperCase() === 'PUT') {
    counts.put++
    // some of the body is on its way when the process dies
    if (mode === 'put' && counts.put === at) setTimeout(die, 3)
  }
  return req
}

if (isMainThread) {
  process.on('exit', () => {
    if (countFile) fs.writeFileSync(countFile, JSON.stringify({...counts, file: filesDone()}))
    fs.rmSync(filesCounter, {force: true})
  })
}
