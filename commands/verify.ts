import {Flags} from '@oclif/core'
import {BaseCommand} from '../src/cli/base.js'
import {formatBytes} from '../src/progress.js'
import {withLockedContext} from '../src/services/locking.js'
import {assertHealthy, verifyRepository, VerifyResult} from '../src/services/verify.js'

export default class Verify extends BaseCommand<typeof Verify> {
  static override description = 'Check the repository; with --read-data every pack is read and every chunk hashed'
  static override flags = {
    'read-data': Flags.boolean({description: 'read and hash all data, not only the structure'}),
  }

  async run(): Promise<VerifyResult> {
    // shared: a prune repacking underneath would make verify report packs it just replaced
    const r = await withLockedContext({repo: this.flags.repo, catalogue: this.flags.catalogue, exclusive: false, purpose: 'verify', waitMs: 60_000}, (ctx) =>
      verifyRepository(ctx.repo, {readData: this.flags['read-data'], progress: this.progress()}),
    )
    for (const p of r.problems) process.stderr.write(`damaged: ${p.object}: ${p.problem}${p.snapshots ? ` (snapshot ${p.snapshots.map((s) => s.slice(0, 12)).join(', ')})` : ''}\n`)
    this.say(`${r.snapshots} snapshots, ${r.packs} packs, ${r.blobs} blobs, ${r.trees} trees${this.flags['read-data'] ? `, ${formatBytes(r.bytesRead)} read` : ''}: ${r.problems.length === 0 ? 'no problems found' : `${r.problems.length} problem(s)`}`)
    if (this.jsonEnabled() && r.problems.length > 0) this.logJson(r)
    assertHealthy(r)
    return r
  }
}
