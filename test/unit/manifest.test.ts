/**
 * The oclif manifest (src/cli/manifest.ts): the build writes one that names every command, and
 * one that no longer matches the build is never handed to oclif, so it cannot hide a command.
 */
import * as fs from 'node:fs'
import {tmpdir} from 'node:os'
import * as path from 'node:path'
import {fileURLToPath} from 'node:url'
import {Config} from '@oclif/core'
import {afterEach, beforeEach, describe, expect, it} from 'vitest'
import {MANIFEST_FILE, cliLoadOptions, manifestIsFresh, writeManifest} from '../../src/cli/manifest.js'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))

/** `remote:add` for commands/remote/add.ts, as oclif names commands */
function sourceCommandIds(): string[] {
  const out: string[] = []
  const walk = (rel: string): void => {
    for (const e of fs.readdirSync(path.join(ROOT, 'commands', rel), {withFileTypes: true})) {
      const p = rel ? `${rel}/${e.name}` : e.name
      if (e.isDirectory()) walk(p)
      else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(p.slice(0, -'.ts'.length).split('/').join(':'))
    }
  }
  walk('')
  return out.sort()
}

const commandModule = (name: string, flag = 'x'): string => `import {Command, Flags} from '@oclif/core'
export default class C extends Command {
  static description = 'command ${name}'
  static flags = {${flag}: Flags.boolean()}
  async run() { this.log('ran ${name}') }
}
`

describe('oclif manifest', () => {
  let root: string

  beforeEach(() => {
    // a minimal oclif package: its command modules import @oclif/core from this checkout
    root = fs.mkdtempSync(path.join(tmpdir(), 'hs-manifest-'))
    fs.writeFileSync(
      path.join(root, 'package.json'),
      JSON.stringify({name: 'manifest-test', version: '1.0.0', type: 'module', oclif: {bin: 'mt', commands: './dist/commands', topicSeparator: ' '}}),
    )
    fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(root, 'node_modules'))
    fs.mkdirSync(path.join(root, 'dist/commands/topic'), {recursive: true})
    fs.writeFileSync(path.join(root, 'dist/commands/a.js'), commandModule('a'))
    fs.writeFileSync(path.join(root, 'dist/commands/topic/b.js'), commandModule('b'))
  })

  afterEach(() => {
    fs.rmSync(root, {recursive: true, force: true})
  })

  const commandIds = async (opts: Awaited<ReturnType<typeof cliLoadOptions>>): Promise<string[]> => (await Config.load(opts)).commandIDs.slice().sort()

  it('lists every command module and is used while it matches the build', async () => {
    expect(await writeManifest(root)).toEqual(['a', 'topic:b'])
    const m = JSON.parse(fs.readFileSync(path.join(root, MANIFEST_FILE), 'utf8'))
    expect(Object.keys(m.commands).sort()).toEqual(['a', 'topic:b'])
    expect(m.commands.a).toMatchObject({isESM: true, relativePath: ['dist', 'commands', 'a.js']})
    expect(manifestIsFresh(root)).toBe(true)
    // fresh: oclif reads it itself (no command module imported to list the commands)
    expect(await cliLoadOptions(root)).toBe(root)
  })

  it('is ignored once a command is added after it was written, so the new command is found', async () => {
    await writeManifest(root)
    fs.writeFileSync(path.join(root, 'dist/commands/c.js'), commandModule('c'))
    expect(manifestIsFresh(root)).toBe(false)
    // what plain oclif would do with the stale manifest: c is hidden
    expect(await commandIds(root)).toEqual(['a', 'topic:b'])
    const opts = await cliLoadOptions(root)
    expect(typeof opts).toBe('object')
    expect(await commandIds(opts)).toEqual(['a', 'c', 'topic:b'])
  })

  it('is ignored when a command changed (its flags in --help would be stale), removed, or the file is unreadable', async () => {
    await writeManifest(root)
    // (what the changed module says is for a new process to see: this one has a.js cached)
    fs.writeFileSync(path.join(root, 'dist/commands/a.js'), commandModule('a', 'y'))
    expect(manifestIsFresh(root)).toBe(false)
    expect(typeof (await cliLoadOptions(root))).toBe('object')

    await writeManifest(root)
    fs.rmSync(path.join(root, 'dist/commands/topic/b.js'))
    expect(manifestIsFresh(root)).toBe(false)
    expect(await commandIds(await cliLoadOptions(root))).toEqual(['a'])

    fs.writeFileSync(path.join(root, MANIFEST_FILE), '{not json')
    expect(manifestIsFresh(root)).toBe(false)
    expect(typeof (await cliLoadOptions(root))).toBe('object')
  })

  it('without a manifest, oclif finds the commands itself', async () => {
    expect(manifestIsFresh(root)).toBe(false)
    expect(await cliLoadOptions(root)).toBe(root)
    expect(await commandIds(root)).toEqual(['a', 'topic:b'])
  })

  it('npm run build writes it after compiling, and for this build it names every command in commands/', async () => {
    const pjson = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'))
    expect(pjson.scripts.build).toMatch(/^tsc -p tsconfig\.json && node scripts\/oclif-manifest\.mjs$/)
    if (!fs.existsSync(path.join(ROOT, 'dist/commands'))) throw new Error('run `npm run build` first: this test reads dist/')
    // generated into a scratch root over this checkout's dist/, not over the real manifest
    fs.rmSync(path.join(root, 'dist'), {recursive: true})
    fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(root, 'package.json'))
    fs.symlinkSync(path.join(ROOT, 'dist'), path.join(root, 'dist'))
    expect(await writeManifest(root)).toEqual(sourceCommandIds())
  }, 60_000)
})
