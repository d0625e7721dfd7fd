import {Args, Flags} from '@oclif/core'
import {BaseCommand} from '../src/cli/base.js'
import {endpointFlag, regionFlag} from '../src/cli/remote-flags.js'
import {formatBytes} from '../src/progress.js'
import {parseDuration} from '../src/schedule/duration.js'
import {KeepPolicy} from '../src/schedule/retention.js'
import {ForgetResult, forget} from '../src/services/forget.js'

const keep = (what: string) => Flags.integer({description: `keep the newest snapshot of each of the last N ${what} that have one`, min: 0})

export default class Forget extends BaseCommand<typeof Forget> {
  static override strict = false
  static override args = {snapshots: Args.string({description: 'snapshot ids (or unique prefixes) to forget, instead of --keep-* rules', ignoreStdin: true})}
  static override description =
    'Remove the snapshots the retention rules do not keep, per container/volume and host (rules count snapshots: a missed day never deletes history; the newest is always kept), or the snapshots named by id'
  static override examples = [
    '<%= config.bin %> forget --keep-last 3 --keep-daily 7 --dry-run',
    '<%= config.bin %> forget --container db --keep-daily 7 --keep-weekly 4 --prune',
    '<%= config.bin %> forget --to offsite --keep-daily 30 --keep-monthly 12 --prune',
    '<%= config.bin %> forget 3f2a9c1b 77d0e4aa   # these snapshots (the ones a restore --force kept, say)',
  ]
  static override flags = {
    'keep-last': Flags.integer({description: 'keep the N newest snapshots', min: 0}),
    'keep-hourly': keep('hours'),
    'keep-daily': keep('days'),
    'keep-weekly': keep('weeks'),
    'keep-monthly': keep('months'),
    'keep-yearly': keep('years'),
    container: Flags.string({description: 'only snapshots of this container'}),
    volume: Flags.string({description: 'only snapshots of this standalone volume'}),
    tag: Flags.string({description: 'only snapshots with this tag'}),
    host: Flags.string({description: 'only snapshots taken on this host'}),
    'dry-run': Flags.boolean({description: 'show what would be removed; change nothing'}),
    prune: Flags.boolean({description: 'prune afterwards (delete the data no snapshot needs)'}),
    grace: Flags.string({description: 'with --prune: leave packs younger than this (e.g. 1h, 0)', default: '1h'}),
    utc: Flags.boolean({description: 'days, weeks, months in UTC instead of local time'}),
    to: Flags.string({description: 'forget on a remote (name or s3://BUCKET[/PREFIX]) instead of the local repository'}),
    endpoint: endpointFlag,
    region: regionFlag,
  }

  async run(): Promise<ForgetResult> {
    const f = this.flags
    const policy: KeepPolicy = {}
    for (const r of ['last', 'hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const) {
      const v = f[`keep-${r}`]
      if (v !== undefined) policy[r] = v
    }
    const r = await forget({
      repo: f.repo,
      catalogue: f.catalogue,
      policy,
      container: f.container,
      volume: f.volume,
      tag: f.tag,
      host: f.host,
      ids: this.positional,
      dryRun: f['dry-run'],
      prune: f.prune,
      graceMs: parseDuration(f.grace, '--grace'),
      utc: f.utc,
      to: f.to,
      endpoint: f.endpoint,
      region: f.region,
      progress: this.progress(),
      onWait: (m) => process.stderr.write(`holyship: ${m}\n`),
    })
    const verb = r.dryRun ? 'would remove' : 'removed'
    for (const g of r.groups) {
      this.say(`${g.kind} ${g.name} on ${g.host}: keep ${g.keep.length}, ${verb} ${g.remove.length}`)
      for (const k of g.keep) this.say(`  keep    ${k.id.slice(0, 12)}  ${k.time}  (${k.reasons.join(', ')})`)
      for (const x of g.remove) this.say(`  ${r.dryRun ? 'remove ' : 'removed'} ${x.id.slice(0, 12)}  ${x.time}`)
    }
    this.say(`${verb} ${r.removed.length} snapshot(s), kept ${r.kept} (policy ${r.policy})`)
    if (r.prune) this.say(`prune${r.prune.dryRun ? ' (dry run)' : ''}: ${r.prune.deleted.length} packs, ${formatBytes(r.prune.bytes.freed)} ${r.prune.dryRun ? 'would be' : ''} freed`)
    return r
  }
}
