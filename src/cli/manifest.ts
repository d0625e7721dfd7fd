/**
 * The oclif manifest (`oclif.manifest.json` at the package root): with it oclif imports only
 * the module of the command that runs, instead of every command module (and through them the
 * AWS SDK, dockerode, ...) just to find one; `--help` lists commands from it without importing
 * any.
 *
 * A manifest that no longer matches the build would hide commands or show stale help, so:
 *   - `npm run build` writes it (scripts/oclif-manifest.mjs → writeManifest) right after tsc;
 *   - it records a fingerprint of what it was made from (package.json's name, version and oclif
 *     field, and every built module under dist/commands and dist/src/cli, by path and content);
 *   - bin/run.js lets oclif use it only while that fingerprint still matches
 *     (cliLoadOptions): after a plain `tsc`, a new command or a changed flag, oclif ignores it
 *     and finds the commands by importing them, as without a manifest (slower, never wrong).
 */
import {createHash} from 'node:crypto'
import {readFileSync, readdirSync, writeFileSync, renameSync} from 'node:fs'
import * as path from 'node:path'
import type {Interfaces} from '@oclif/core'

export const MANIFEST_FILE = 'oclif.manifest.json'

/** what the fingerprint covers, relative to the package root */
const FINGERPRINTED_DIRS = ['dist/commands', 'dist/src/cli']

/** `.js` files below dir, relative to root, sorted; none when dir does not exist */
function jsFiles(root: string, dir: string): string[] {
  const out: string[] = []
  const walk = (rel: string): void => {
    let entries
    try {
      entries = readdirSync(path.join(root, rel), {withFileTypes: true})
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return
      throw e
    }
    for (const e of entries) {
      const p = `${rel}/${e.name}`
      if (e.isDirectory()) walk(p)
      else if (e.name.endsWith('.js')) out.push(p)
    }
  }
  walk(dir)
  return out.sort()
}

/**
 * The fingerprint of the built CLI's command surface: package.json's name, version and oclif
 * field, and the path and bytes of every module under dist/commands and dist/src/cli.
 */
export function buildFingerprint(root: string): string {
  const h = createHash('sha256')
  const pjson = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as {name?: string; version?: string; oclif?: unknown}
  h.update(JSON.stringify([pjson.name, pjson.version, pjson.oclif ?? null])).update('\0')
  for (const dir of FINGERPRINTED_DIRS) {
    for (const f of jsFiles(root, dir)) h.update(f).update('\0').update(readFileSync(path.join(root, f))).update('\0')
  }
  return h.digest('hex')
}

interface HolyshipManifest {
  version: string
  commands: Record<string, unknown>
  holyship?: {fingerprint?: string}
}

function readManifest(root: string): HolyshipManifest | undefined {
  let raw: string
  try {
    raw = readFileSync(path.join(root, MANIFEST_FILE), 'utf8')
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw e
  }
  try {
    return JSON.parse(raw) as HolyshipManifest
  } catch {
    // unreadable: treated as stale (never handed to oclif, which would warn and then ignore it)
    return {version: '', commands: {}}
  }
}

/** true when the package root has a manifest made from exactly the current build */
export function manifestIsFresh(root: string): boolean {
  const m = readManifest(root)
  return !!m?.holyship?.fingerprint && m.holyship.fingerprint === buildFingerprint(root)
}

/**
 * Build the manifest the way oclif itself does without one (every command module imported and
 * described), plus the fingerprint, and write it atomically at the package root. Any command
 * that fails to load fails the build. Returns the command ids it lists.
 */
export async function writeManifest(root: string): Promise<string[]> {
  const {Plugin} = await import('@oclif/core')
  const plugin = new Plugin({root, isRoot: true, type: 'core', ignoreManifest: true, errorOnManifestCreate: true, respectNoCacheDefault: true})
  await plugin.load()
  const manifest: HolyshipManifest = {...plugin.manifest, holyship: {fingerprint: buildFingerprint(root)}}
  const file = path.join(root, MANIFEST_FILE)
  const tmp = `${file}.${process.pid}.tmp`
  writeFileSync(tmp, JSON.stringify(manifest, null, 2) + '\n')
  renameSync(tmp, file)
  return Object.keys(manifest.commands).sort()
}

/**
 * What bin/run.js hands to oclif: the package root when its manifest is fresh (or absent: oclif
 * then finds the commands itself); when it is stale, a root plugin loaded with the manifest
 * ignored, so that oclif never trusts it.
 */
export async function cliLoadOptions(root: string): Promise<string | Interfaces.LoadOptions> {
  const m = readManifest(root)
  if (!m || m.holyship?.fingerprint === buildFingerprint(root)) return root
  const {Plugin} = await import('@oclif/core')
  const plugin = new Plugin({root, isRoot: true, type: 'core', ignoreManifest: true})
  await plugin.load()
  return {root, plugins: new Map([[plugin.name, plugin]])}
}
