/**
 * A snapshot writer in ANOTHER process, for prune race tests. argv[2] is JSON:
 *   {repo, lock: boolean, name, files: {path: [seed, size]}}
 * Protocol on stdout: LOCKED (shared lock held, if lock), PACKS (data and index written,
 * manifest not yet), SNAPSHOT <id>, DONE. It waits for a line GO on stdin between PACKS and
 * writing the manifest.
 */
import {createInterface} from 'node:readline'
import {LocalBackend} from '../../../src/backend/local.js'
import {RepoLock} from '../../../src/repo/lock.js'
import {Repository} from '../../../src/repo/repository.js'
import {content, writeSnapshot} from './repo-fixture.js'

const args = JSON.parse(process.argv[2]) as {repo: string; lock: boolean; name: string; files: Record<string, [string, number]>}
const lines = createInterface({input: process.stdin})[Symbol.asyncIterator]()
const say = (s: string): void => void process.stdout.write(s + '\n')

const backend = new LocalBackend(args.repo)
let lock: RepoLock | undefined
if (args.lock) {
  // the protocol: lock first, then load the index
  lock = await RepoLock.acquire(backend, {exclusive: false, purpose: 'snapshot'})
  say('LOCKED')
}
const repo = await Repository.open(backend)
const files = Object.fromEntries(Object.entries(args.files).map(([p, [seed, size]]) => [p, content(seed, size)]))
const id = await writeSnapshot(repo, args.name, files, {
  beforeManifest: async () => {
    say('PACKS')
    for (;;) {
      const l = await lines.next()
      if (l.done || l.value.trim() === 'GO') break
    }
    await lock?.assertHeld()
  },
})
say(`SNAPSHOT ${id}`)
await lock?.release()
say('DONE')
process.exit(0)
