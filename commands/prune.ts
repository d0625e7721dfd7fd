import {Flags} from '@oclif/core'
import {BaseCommand} from '../src/cli/base.js'
import {endpointFlag, regionFlag} from '../src/cli/remote-flags.js'
import {formatBytes} from '../src/progress.js'
import {PruneResult} from '../src/repo/prune.js'
import {parseDuration} from '../src/schedule/duration.js'
import {prune} from '../src/services/prune.js'

export default class Prune extends BaseCommand<typeof Prune> {
  static override description =
    'Delete the data no snapshot needs and repack mostly-empty packs (exclusive repository lock; safe with concurrent snapshots)'
  static override examples = ['<%= config.bin %> prune --dry-run', '<%= config.bin %> prune', '<%= config.bin %> prune --to offsite']
  static override flags = {
    'dry-run': Flags.boolean({description: 'show what would be deleted and the bytes freed; change nothing'}),
    to: Flags.string({description: 'prune a remote (name or s3://BUCKET[/PREFIX]) instead of the local repository'}),
    grace: Flags.string({description: 'leave packs younger than this alone (a writer without a lock may still need them)', default: '1h'}),
    wait: Flags.string({description: 'wait this long for the repository lock (e.g. 10m)', default: '0'}),
    endpoint: endpointFlag,
    region: regionFlag,
  }

  async run(): Promise<PruneResult> {
    const f = this.flags
    const r = await prune({
      repo: f.repo,
      catalogue: f.catalogue,
      to: f.to,
      endpoint: f.endpoint,
      region: f.region,
      dryRun: f['dry-run'],
      graceMs: parseDuration(f.grace, '--grace'),
      lockWaitMs: parseDuration(f.wait, '--wait'),
      onWait: (m) => process.stderr.write(`holyship: ${m}\n`),
      progress: this.progress(),
    })
    if (r.dryRun) for (const d of r.deleted) this.say(`would delete ${d.key} (${formatBytes(d.size)}, ${d.why})`)
    const p = r.packs
    this.say(
      `${r.dryRun ? 'would delete' : 'deleted'} ${r.deleted.length} of ${p.total} packs (${p.unused} unused, ${p.repacked} repacked, ${p.unindexed} unindexed), ` +
        `${r.dryRun ? 'would write' : 'wrote'} ${p.written} new packs (${formatBytes(r.bytes.written)}): ${formatBytes(r.bytes.freed)} ${r.dryRun ? 'would be ' : ''}freed of ${formatBytes(r.bytes.total)}` +
        (p.young ? `; ${p.young} packs younger than the grace period left alone` : '') +
        (p.rescued ? `; ${p.rescued} packs kept for snapshots written meanwhile` : ''),
    )
    return r
  }
}
